"""zojax.nnx: an NNX model is split into ZO state and frozen weights, trained, and written back (issue 24)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zojax


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)  # statistics: state, not parameters
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.norm(self.hidden(x))))


def _mse(model, batch):
    return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)


BATCH = {"x": jax.random.normal(jax.random.PRNGKey(1), (16, 4)), "y": jnp.linspace(-1, 1, 16)[:, None]}


def _trained(scope, steps=40):
    model = _Net(nnx.Rngs(0))
    before = jax.tree.map(np.array, nnx.state(model))
    spec, opt = zojax.ZOSpec(members=4, scope=scope), zojax.zo_sgd(0.05)
    loss = zojax.nnx.loss_fn(model, _mse)
    state, frozen = zojax.nnx.init(model, spec, opt, jax.random.PRNGKey(0))
    state, infos = zojax.run_steps(
        state, frozen, zojax.stack_batches([BATCH] * steps), loss_fn=loss, spec=spec, optimizer=opt
    )
    return model, before, state, frozen, infos


def test_the_step_donates_the_models_arrays_until_they_are_written_back():
    model, before, state, frozen, infos = _trained(scope=None)
    with pytest.raises(RuntimeError, match="deleted"):  # the donation rule the module documents
        model(BATCH["x"])
    assert zojax.nnx.update(model, state, frozen) is model
    trained = nnx.state(model, nnx.Param)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(zojax.combine(state.params, frozen))):
        np.testing.assert_array_equal(a, b)
    assert float(_mse(model, BATCH)) < float(infos.loss[0])  # trained: below the first step's loss
    # batch statistics are read, never trained
    stats = nnx.state(model, nnx.BatchStat)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(nnx.state(_Net(nnx.Rngs(0)), nnx.BatchStat))):
        np.testing.assert_array_equal(a, b)
    assert infos.loss.shape == (40,) and infos.losses.shape == (40, 4, 2)


def test_scope_matches_nnx_paths():
    model, before, state, frozen, _ = _trained(scope="^out/", steps=5)
    zojax.nnx.update(model, state, frozen)
    after = nnx.state(model)
    np.testing.assert_array_equal(after["hidden"]["kernel"].value, before["hidden"]["kernel"].value)
    assert not np.array_equal(after["out"]["kernel"].value, before["out"]["kernel"].value)


def test_stack_batches():
    stacked = zojax.stack_batches({"x": jnp.full((2,), i)} for i in range(3))
    np.testing.assert_array_equal(stacked["x"], [[0, 0], [1, 1], [2, 2]])
    with pytest.raises(ValueError, match="at least one batch"):
        zojax.stack_batches([])
