"""zojax.optim.fused: the step, several steps in one call, micro-batches, and steps that are skipped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax.directions import LowRank

from ..problems import least_squares, logistic

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


@pytest.mark.parametrize("problem", [least_squares, logistic], ids=["least_squares", "logistic"])
@pytest.mark.parametrize("which", ["zo_sgd", "adam"])
def test_optimizers_reduce_loss(problem, which):
    loss, params, batch = problem()
    sgd_lr = 0.02 if problem is least_squares else 1.0
    opt = zojax.zo_sgd(sgd_lr) if which == "zo_sgd" else optax.chain(zojax.densify(), optax.adam(0.05))
    spec = zojax.ZOSpec(eps=1e-3, members=8)
    initial = float(loss(params, batch))
    state, frozen = zojax.init(params, spec, opt, KEY)
    batches = jax.tree.map(lambda x: jnp.broadcast_to(x, (300,) + x.shape), batch)
    state, info = zojax.run_steps(state, frozen, batches, loss_fn=loss, spec=spec, optimizer=opt)
    final = float(loss(zojax.combine(state.params, frozen), batch))
    factor = 50 if problem is least_squares else 3
    assert final < initial / factor, (initial, final)


def test_run_steps_equals_repeated_step():
    loss, params, batch = least_squares()
    spec, opt = zojax.ZOSpec(noise=LowRank(rank=1, refresh_every=2), members=2), zojax.zo_sgd(0.01)
    s1, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, KEY)
    for _ in range(5):
        s1, _ = zojax.step(s1, frozen, batch, loss_fn=loss, spec=spec, optimizer=opt)
    s2, _ = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, KEY)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 5), batch)
    s2, info = zojax.run_steps(s2, frozen, stacked, loss_fn=loss, spec=spec, optimizer=opt)
    np.testing.assert_allclose(s1.params["w"], s2.params["w"], rtol=1e-6)
    assert info.losses.shape == (5, 2, 2) and info.step.tolist() == [0, 1, 2, 3, 4]


def test_micro_batches_average_coefficients():
    loss, params, batch = least_squares()
    spec = zojax.ZOSpec(members=3)
    halves = jax.tree.map(lambda x: x.reshape((2, 32) + x.shape[1:]), batch)
    c = [spec.coefficients(zojax.score(loss, params, jax.tree.map(lambda x, i=i: x[i], halves), KEY, 0, spec))
         for i in range(2)]
    opt = zojax.zo_sgd(0.0)
    state, frozen = zojax.init(params, spec, opt, KEY)
    _, info = zojax.step(state, frozen, halves, loss_fn=loss, spec=spec, optimizer=opt, micro_batches=2)
    # coefficients divide float32 loss differences by 2 eps: compare at that resolution
    np.testing.assert_allclose(info.coeffs, (c[0] + c[1]) / 2, rtol=1e-4, atol=2e-3)


def test_non_finite_loss_skips_step_and_counts_it():
    def loss(params, batch):
        return jnp.sum(params["w"] ** 2) * batch

    params = {"w": jnp.ones(3)}
    spec, opt = zojax.ZOSpec(members=2), zojax.zo_sgd(0.1)
    state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, KEY)
    state, info = zojax.step(state, frozen, jnp.float32(jnp.nan), loss_fn=loss, spec=spec, optimizer=opt)
    assert not bool(info.applied) and int(state.skipped) == 1 and int(state.step) == 1
    np.testing.assert_array_equal(state.params["w"], params["w"])
    state, info = zojax.step(state, frozen, jnp.float32(1.0), loss_fn=loss, spec=spec, optimizer=opt)
    assert bool(info.applied) and int(state.skipped) == 1


@pytest.mark.parametrize("optimizer", [zojax.zo_sgd(1e38), zojax.zo_sgd(lambda count: jnp.inf), optax.chain(zojax.zo_sgd(1e38))],
                         ids=["overflow", "schedule", "chained"])
def test_update_that_leaves_non_finite_weights_is_skipped(optimizer):
    spec = zojax.ZOSpec(members=2)
    start = {"w": jnp.ones(3)}
    state, frozen = zojax.init(jax.tree.map(jnp.copy, start), spec, optimizer, KEY3)
    # finite losses and coefficients (~100), an update of ~1e40 that float32 cannot hold
    state, info = zojax.step(state, frozen, jnp.ones(3), loss_fn=lambda p, b: 100 * jnp.sum(p["w"] * b),
                             spec=spec, optimizer=optimizer)
    assert bool(jnp.all(jnp.isfinite(info.losses)))
    assert not bool(info.applied) and int(state.skipped) == 1 and int(state.step) == 1
    np.testing.assert_array_equal(state.params["w"], start["w"])


def test_a_bound_too_large_falls_back_to_the_exact_check():
    # weights near float32's largest value: the cheap bound cannot vouch for the update, the exact check can
    spec, opt = zojax.ZOSpec(members=1), zojax.zo_sgd(1e-3)
    start = {"w": jnp.array([2e38, 1.0, -1.0], jnp.float32)}
    state, frozen = zojax.init(jax.tree.map(jnp.copy, start), spec, opt, KEY3)
    state, info = zojax.step(state, frozen, jnp.ones(3), loss_fn=lambda p, b: jnp.sum(p["w"][1:] * b[1:]),
                             spec=spec, optimizer=opt)
    assert bool(info.applied) and int(state.skipped) == 0
    assert not np.array_equal(state.params["w"][1:], start["w"][1:])


def test_a_float16_leaf_next_to_float32_leaves_is_checked_against_float16s_limit():
    """In a state mixing float16 and float32 leaves, an update that overflows the float16 leaf is caught:
    the cheap bound must be compared with the smallest dtype's largest value, not float32's. (init keeps
    16-bit leaves as float32 master copies; a state built by hand may hold them as they are.)"""
    from zojax.optim import apply_update

    top = float(np.finfo(np.float16).max) - 32  # 65472, the float16 just below the largest
    start = {"h": jnp.array([top, -top] * 4, jnp.float16), "w": jnp.ones(3, jnp.float32)}
    spec, opt = zojax.ZOSpec(members=2), zojax.zo_sgd(1.0)
    params = jax.tree.map(jnp.copy, start)
    state = zojax.ZOState(params, opt.init(params), jnp.copy(KEY3), jnp.int32(0), jnp.int32(0))

    def loss(p, b):  # coefficients ~1e3 from w alone; h moves by ~1e3 z, past float16's largest value
        return 1e3 * jnp.sum(p["w"] * b)

    frozen = {"h": None, "w": None}  # both leaves train
    state, info = zojax.step(state, frozen, jnp.ones(3), loss_fn=loss, spec=spec, optimizer=opt)
    grad = zojax.ZOGrad(KEY3, jnp.int32(0), info.coeffs, spec.noise)
    overflowed, _ = apply_update(opt, grad, start, opt.init(start))
    assert not bool(jnp.all(jnp.isfinite(overflowed["h"])))  # the update, applied, would overflow float16
    assert bool(jnp.all(jnp.isfinite(info.losses)))
    assert not bool(info.applied) and int(state.skipped) == 1
    for name in start:
        np.testing.assert_array_equal(state.params[name], start[name])
