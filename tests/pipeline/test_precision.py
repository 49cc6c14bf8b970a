"""The trainer under bfloat16: the default recipe's coefficients agree with float32's, a perturbation the
compute dtype cannot resolve is refused before step 0, and a run without signal stops."""

import numpy as np
import pytest

from zojax.cli import main
from zojax.seedlog import SeedLog

from .runs import refused, write_config


def _coefficients(run_dir) -> np.ndarray:
    return np.array([e["coeffs"] for e in SeedLog.load(run_dir / "seeds.jsonl").entries])


@pytest.mark.slow
def test_default_recipe_under_bfloat16_agrees_in_sign_with_float32(tmp_path):
    """The default recipe (MeZO on SmolLM2's final norm scales, eps 1e-3) for 40 steps: under bfloat16
    compute the coefficients are non-zero and agree in sign with float32's on the same seeds."""
    small = ["task.num_train=200", "task.num_dev=8", "task.num_test=8", "train.steps=40", "train.steps_per_call=20",
             "train.checkpoint_every=0", "train.progress=false", "train.tensorboard=false"]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        runs[dtype] = tmp_path / dtype
        assert main(["train", *small, f"model.dtype={dtype}", f"train.output_dir={runs[dtype]}"]) == 0
    f32, bf16 = _coefficients(runs["float32"]), _coefficients(runs["bfloat16"])
    assert f32.shape == bf16.shape == (40, 1)
    assert np.all(bf16 != 0)
    # issue 21's target; measured 40 of 40 since the two-part bfloat16 head (34 of 40 before it)
    assert np.mean(np.sign(bf16) == np.sign(f32)) >= 0.9


def test_an_unresolved_perturbation_is_refused_before_step_0(assets, tmp_path, capsys):
    """The embedding (a matrix: computed in bfloat16) perturbed by 1e-5: its +eps and -eps values
    round to the same numbers, so the run is refused, naming the leaf and the ways out."""
    out = tmp_path / "run"
    cfg = write_config(assets, out, model__dtype="bfloat16", zo__method="mezo", zo__scope="embed", zo__eps=1e-5)
    line = refused(capsys, main(["train", "--config", str(cfg)]), "embed_tokens/embedding", "bfloat16",
                   "model.dtype=float32", "zo.eps")
    assert "% of its entries" in line
    assert not (out / "seeds.jsonl").exists()


def test_a_run_without_signal_stops(assets, tmp_path, capsys):
    """error_rate with a tiny eps: no prediction flips, so every coefficient is exactly 0; the run stops
    with exit code 1 after train.max_zero_signal_steps such steps and names the last good checkpoint."""
    out = tmp_path / "run"
    cfg = write_config(assets, out, train__objective="error_rate", zo__eps=1e-5, train__max_zero_signal_steps=3,
                       train__steps=8, train__steps_per_call=2, train__checkpoint_every=2, train__eval_every=0)
    line = refused(capsys, main(["train", "--config", str(cfg)]), "3 consecutive steps had coefficients all exactly 0",
                   "up to step 4", "The last good checkpoint is step 2", "zo.eps", code=1)
    assert "max_zero_signal_steps=null" in line
