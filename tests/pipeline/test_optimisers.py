"""FZOO, HiZOO, Sparse MeZO and ZO-Muon through the trainer: selected from the config, refused with clear errors, and HiZOO
(the one whose seed log carries more than coefficients) trained and replayed. Each method's step and replay are
tested on a quadratic in tests/optim/test_scaled.py and test_orthogonal.py; one tiny run here keeps the suite fast."""

import json

import jax.numpy as jnp
import pytest

from zojax.cli import main
from zojax.config import ConfigError, load_config

from .runs import tiny_config

METHODS = {"hizoo": {"zo__method": "hizoo", "zo__members": 1, "optim__hessian_smooth": 1e-2}}


def test_hizoo_trains_and_replays_from_its_seed_log(assets, tmp_path, capsys):
    method = "hizoo"
    out = tmp_path / method
    assert main(["train", "--config", str(tiny_config(assets, out, **METHODS[method]))]) == 0
    log = [json.loads(line) for line in (out / "seeds.jsonl").read_text().splitlines()]
    assert len(log) == 5 and all(len(e["coeffs"]) == METHODS[method]["zo__members"] for e in log[1:])
    assert all(len(e["curvature"]) == 1 for e in log[1:])  # HiZOO's state needs its curvatures logged
    assert main(["replay", "--run", str(out)]) == 0
    assert "equal the checkpoint of step 4" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, culprit", [
    (["zo.method=fzoo", "zo.members=1"], "zo.members >= 2"),
    (["zo.method=fzoo", "zo.members=4", "zo.sided=two"], "zo.sided=one"),
    (["zo.method=fzoo", "zo.members=4", "zo.estimator=rank"], "zo.estimator=rank"),
    (["zo.method=hizoo", "zo.sided=one"], "zo.sided=two"),
    (["zo.method=sparse_mezo", "zo.lazy_dense=true"], "zo.lazy_dense=false"),
    (["zo.method=sparse_mezo", "optim.sparsity=1.0"], "optim.sparsity"),
])
def test_config_errors_name_the_culprit(overrides, culprit):
    with pytest.raises(ConfigError, match=culprit.replace(".", "\\.").replace("=", "=")):
        load_config(None, overrides)


def test_each_method_builds_its_spec_and_update():
    from zojax.directions import Gaussian, Rademacher
    from zojax.optim import ZOTransformation
    from zojax.run import make_optimizer, make_spec

    fzoo = make_spec(load_config(None, ["zo.method=fzoo", "zo.members=8"]))
    assert (type(fzoo.noise), fzoo.sided, fzoo.estimator, fzoo.center) == (Rademacher, "one", "fzoo", False)
    for method in ("hizoo", "sparse_mezo"):
        cfg = load_config(None, [f"zo.method={method}"])
        spec = make_spec(cfg)
        assert type(spec.noise) is Gaussian and spec.center == (method == "hizoo")
        assert isinstance(make_optimizer(cfg, spec), ZOTransformation) and make_optimizer(cfg, spec).scale is not None
    lozo = load_config(None, ["zo.method=lozo", "optim.name=zo_muon"])
    muon = make_optimizer(lozo, make_spec(lozo))
    assert muon.init({"w": jnp.ones((2, 2))}).count == 0
    mezo = load_config(None, ["zo.method=mezo", "optim.name=zo_muon"])
    with pytest.raises(ConfigError, match="zo_muon orthogonalises a low-rank estimate"):
        make_optimizer(mezo, make_spec(mezo))
    cfg = load_config(None, ["zo.method=hizoo", "optim.name=adam"])
    with pytest.raises(ConfigError, match="zo.method=hizoo is its own update"):
        make_optimizer(cfg, make_spec(cfg))
