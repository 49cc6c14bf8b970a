"""The reward objective with the population sharded over the mesh's ``pop`` axis: the same losses,
coefficients and update as unsharded, for an in-program reward and for a host reward (``pure_callback``,
which XLA accepts only when all mesh axes are manual: :func:`zojax.parallel.over_population` makes a
one-device ``model`` axis manual too).

Runs in a subprocess with 4 virtual CPU devices (``--xla_force_host_platform_device_count``), like
``test_parallel.py``; this file is also the worker script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
ROOT = HERE.parents[2]
DEVICES = 4
MEMBERS = 4


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("es_sharded")
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES} --xla_backend_optimization_level=0"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(HERE), str(root)], env=env, capture_output=True, text=True,
                          timeout=1200, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"worker failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads((root / "result.json").read_text())


# "host": a reward computed by Python (pure_callback) inside the population's shard_map, which XLA accepts only
# when every mesh axis is manual (zojax.parallel.over_population makes a one-device 'model' axis manual too)
@pytest.mark.parametrize("reward", ["in_program", "host"])
def test_sharded_population_gives_the_unsharded_coefficients(sharded, reward):
    if "error" in sharded[reward]:
        raise AssertionError(sharded[reward]["error"])
    single, pop = sharded[reward]["single"], sharded[reward]["pop"]
    assert pop["devices"] == DEVICES and pop["losses_sharding"] == "replicated"
    np.testing.assert_allclose(pop["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pop["coeffs"], single["coeffs"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pop["param_change"], single["param_change"], rtol=1e-4, atol=1e-7)
    # the members disagree (the coefficients carry a signal) and the update moved the weights
    assert len(np.unique(np.round(single["losses"], 6))) > 1
    assert np.abs(single["coeffs"]).max() > 0 and single["param_change"] > 0


# --- worker (runs as a script in the subprocess) ---------------------------------------------------


def _worker(root: Path) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import zojax
    from tests.tiny_assets import make_char_assets  # absolute: this file runs as a script, ROOT on PYTHONPATH
    from zojax import parallel
    from zojax.models import from_pretrained
    from zojax.models.generate import stop_tokens
    from zojax.tasks import generation as gen
    from zojax.tasks import rewards

    assert jax.device_count() == DEVICES
    make_char_assets(root)
    model, _, tok = from_pretrained(str(root / "model"))
    graphdef, params = nnx.split(model)
    examples = rewards.arithmetic_examples(8, seed=0)
    eos, pad = stop_tokens(model, tok)
    batch = gen.prompt_batch(gen.encode_prompts(examples, tok, pad=pad), [0, 3, 5])
    sampling = gen.Sampling(samples=2, max_new_tokens=3, temperature=1.0, eos=eos, pad=pad)
    text_reward = gen.host_reward(lambda text, ex: sum(map(ord, text)) / 100 + ex["answer"] / 1000, examples, tok, eos)
    # the random tiny model never answers right: score how many digits of its answer it sampled instead
    answer = gen.answer_token_reward(examples, tok)
    token_reward = {"in_program": lambda c, i: jnp.mean(jnp.isin(c, jnp.arange(3, 13)), axis=-1) + answer(c, i),
                    "host": text_reward}
    spec = zojax.ZOSpec(noise=zojax.LowRank(rank=1, refresh_every=1), eps=0.5, members=MEMBERS, scope="all",
                        estimator="zscore", adapter=True)
    opt = zojax.zo_sgd(1e-2)
    result: dict = {}
    for reward_name, reward in token_reward.items():
        loss = gen.reward_loss(graphdef, sampling, reward)
        result[reward_name] = {}
        for name, mesh in (("single", None), ("pop", parallel.make_mesh(DEVICES, 1))):
            state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, jax.random.PRNGKey(3))
            before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
            state, frozen = parallel.shard_run(state, frozen, mesh)
            b = batch if mesh is None else parallel.replicate(jax.tree.map(jnp.asarray, batch), mesh)
            try:
                state, info = zojax.step(state, frozen, b, loss_fn=loss, spec=spec, optimizer=opt, mesh=mesh)
            except NotImplementedError as err:  # the host reward on a mesh (see the module doc)
                result[reward_name] = {"error": str(err).splitlines()[0]}
                break
            after = [np.asarray(x) for x in jax.tree.leaves(state.params)]
            result[reward_name][name] = {
                "devices": len(info.losses.sharding.device_set),
                "losses_sharding": "replicated" if info.losses.sharding.is_fully_replicated else "sharded",
                "losses": np.asarray(info.losses).tolist(),
                "coeffs": np.asarray(info.coeffs).tolist(),
                "param_change": float(sum(np.abs(a - b).sum() for a, b in zip(after, before, strict=True))),
            }
    (root / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
