"""zojax.seedlog: a run replays bitwise from its seed log, and a log it cannot regenerate is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import zojax
from zojax.directions import LowRank, Rademacher
from zojax.toy import ToyMLP, toy_classification

from ..problems import toy_loss

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


@pytest.mark.parametrize("noise", [Rademacher(), LowRank(rank=2, refresh_every=3)], ids=lambda n: type(n).__name__)
def test_replay_is_bitwise(noise, tmp_path):
    graphdef, params = nnx.split(ToyMLP(4, 8, 3, rngs=nnx.Rngs(2)))
    loss = toy_loss(graphdef)
    batch = toy_classification(KEY, n=16)
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=3, scope="kernel")
    opt = optax.chain(zojax.densify(), optax.adam(1e-2)) if isinstance(noise, Rademacher) else zojax.zo_sgd(0.05, 0.01)
    base = jax.tree.map(jnp.copy, params)
    state, frozen = zojax.init(params, spec, opt, KEY)
    log = zojax.SeedLog.new(KEY, spec)
    for _ in range(3):
        state, info = zojax.step(state, frozen, batch, loss_fn=loss, spec=spec, optimizer=opt)
        log.record(info.step, info.coeffs, info.applied)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 4), batch)
    state, info = zojax.run_steps(state, frozen, stacked, loss_fn=loss, spec=spec, optimizer=opt)
    log.record(info.step, info.coeffs, info.applied)
    log.save(tmp_path / "seeds.jsonl")
    loaded = zojax.SeedLog.load(tmp_path / "seeds.jsonl")
    rebuilt = zojax.replay(base, loaded, opt)
    trained = zojax.combine(state.params, frozen)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.tree.leaves(rebuilt)[1], jax.tree.leaves(base)[1])


def test_replay_refuses_a_log_from_another_prng_or_key_derivation():
    spec, opt = zojax.ZOSpec(members=2), zojax.zo_sgd(0.1)
    for field, value in (("prng_impl", "rbg"), ("key_derivation", "crc32 v1")):
        log = zojax.SeedLog.new(KEY3, spec)
        log.header[field] = value
        with pytest.raises(ValueError, match="directions would differ"):
            zojax.replay({"w": jnp.zeros(3)}, log, opt)
