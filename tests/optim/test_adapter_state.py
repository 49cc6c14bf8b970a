"""The dynamic adapter state: LoZO's update kept as ``V A^T`` between V refreshes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr

import zojax
from zojax import nn
from zojax.directions import LowRank
from zojax.optim.fused import _step

KEY = jax.random.PRNGKey(5)
SHAPE = (64, 48)  # (d_in, d_out): no activation or factor in the tests has this shape


def linear_loss(params, batch):
    x, y = batch
    return jnp.mean((nn.dense(x, params["w"], params["b"]) - y) ** 2)


def _params():
    k1, k2 = jax.random.split(KEY)
    return {"w": 0.1 * jax.random.normal(k1, SHAPE), "b": jnp.zeros(SHAPE[1])}


def _batches(n):
    keys = jax.random.split(jax.random.PRNGKey(8), n)
    xs = [jax.random.normal(k, (2, SHAPE[0])) for k in keys]
    return [(x, jnp.tanh(x[:, : SHAPE[1]])) for x in xs]


def _run(optimizer, spec, batches):
    state, frozen = zojax.init(_params(), spec, optimizer, KEY)
    losses, weights = [], []
    for batch in batches:
        state, info = zojax.step(state, frozen, batch, loss_fn=linear_loss, spec=spec, optimizer=optimizer)
        losses.append(np.asarray(info.losses))
        effective = zojax.effective_params(optimizer, state.params, state.opt_state, state.key, state.step)
        weights.append(jax.tree.map(np.array, effective))  # a copy: the next step donates the state
    return np.stack(losses), weights, state


@pytest.mark.parametrize("adapter", [True, False], ids=["adapter", "generic"])
@pytest.mark.parametrize("members", [1, 3])
def test_adapter_state_equals_zo_sgd_step_by_step_with_skips(adapter, members):
    noise = LowRank(rank=2, refresh_every=3)
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=members, adapter=adapter)
    batches = _batches(10)
    nan = (batches[0][0] * jnp.nan, batches[0][1])
    batches[4] = nan  # skipped inside a window
    batches[6] = nan  # skipped where a new window starts (a fold step)
    want_losses, want_weights, _ = _run(zojax.zo_sgd(0.01), spec, batches)
    got_losses, got_weights, state = _run(zojax.lozo_adapter(0.01, noise=noise, members=members), spec, batches)
    assert int(state.skipped) == 2
    finite = np.isfinite(want_losses)
    np.testing.assert_array_equal(finite, np.isfinite(got_losses))
    np.testing.assert_allclose(got_losses[finite], want_losses[finite], rtol=1e-5, atol=1e-5)
    for t, (got, want) in enumerate(zip(got_weights, want_weights)):
        for name in ("w", "b"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=2e-5, err_msg=f"{name} at step {t}")
    # the run really moved, and the accumulator was folded at the V refreshes
    assert float(jnp.abs(want_weights[-1]["w"] - _params()["w"]).max()) > 1e-3


def _weight_writing_conds(jaxpr, shape) -> tuple[int, int]:
    """(weight-shaped arithmetic outside any cond, conds with weight-shaped arithmetic inside)."""
    arithmetic = {"add", "sub", "mul", "convert_element_type", "select_n", "dot_general"}

    def writes(jx) -> bool:
        for eqn in jx.eqns:
            if eqn.primitive.name in arithmetic and any(getattr(v.aval, "shape", None) == shape for v in eqn.outvars):
                return True
            if any(writes(sub) for sub in _subjaxprs(eqn)):
                return True
        return False

    outside, conds = 0, 0

    def walk(jx):
        nonlocal outside, conds
        for eqn in jx.eqns:
            if eqn.primitive.name == "cond":
                conds += any(writes(branch.jaxpr) for branch in eqn.params["branches"])
            elif eqn.primitive.name in arithmetic and any(
                getattr(v.aval, "shape", None) == shape for v in eqn.outvars
            ):
                outside += 1
            else:
                for sub in _subjaxprs(eqn):
                    walk(sub)

    walk(jaxpr)
    return outside, conds


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, Jaxpr):
                yield item


def test_only_the_fold_writes_the_weights():
    noise = LowRank(rank=2, refresh_every=4)
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=2, adapter=True)
    batch = _batches(1)[0]

    def weight_writes(optimizer):
        state, frozen = zojax.init(_params(), spec, optimizer, KEY)
        step = lambda s: _step(s, frozen, batch, loss_fn=linear_loss, spec=spec, optimizer=optimizer)  # noqa: E731
        return _weight_writing_conds(jax.make_jaxpr(step)(state).jaxpr, SHAPE)

    # the adapter state: nothing outside conditionals; two conditionals form w: the fold, and the exact check
    # of what a fold would write, taken only where the cheap bound (update_bound) cannot rule out an overflow
    assert weight_writes(zojax.lozo_adapter(0.05, noise=noise, members=2)) == (0, 2)
    # zo_sgd rewrites w in the update (guard pass and apply): the check sees weight writes
    outside, conds = weight_writes(zojax.zo_sgd(0.05))
    assert outside + conds >= 2


def _dot_shapes(jaxpr) -> set:
    shapes = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.update(tuple(v.aval.shape) for v in eqn.outvars)
        for sub in _subjaxprs(eqn):
            shapes |= _dot_shapes(sub)
    return shapes


def test_a_stack_folds_one_layer_at_a_time_where_the_sum_is_a_matmul():
    """9 members of rank 2 (18 terms, past the elementwise sum): the fold forms V A^T one layer of the stack at a time,
    the steps still equal zo_sgd's, and the exact check answers without forming the folded weights."""
    stack = (3, 16, 12)
    noise = LowRank(rank=2, refresh_every=2, stacked="^w$")
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=9)
    params = {"w": 0.1 * jax.random.normal(KEY, stack)}

    def loss(p, batch):
        x, y = batch
        return jnp.mean((jnp.einsum("bi,lio->lbo", x, nn.materialize(p["w"])) - y) ** 2)

    keys = jax.random.split(jax.random.PRNGKey(9), 5)
    batches = [(jax.random.normal(k, (2, 16)), jax.random.normal(k, (3, 2, 12))) for k in keys]

    def run(optimizer):
        state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, optimizer, KEY)
        for batch in batches:
            state, _ = zojax.step(state, frozen, batch, loss_fn=loss, spec=spec, optimizer=optimizer)
        return state, zojax.effective_params(optimizer, state.params, state.opt_state, state.key, state.step)

    _, want = run(zojax.zo_sgd(0.01))
    adapter = zojax.lozo_adapter(0.01, noise=noise, members=9)
    state, got = run(adapter)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-4, atol=2e-5)
    assert float(jnp.abs(want["w"] - params["w"]).max()) > 1e-3

    fold = lambda s: adapter.fold(s.params, s.opt_state, s.key, s.step, True)  # noqa: E731
    assert stack not in _dot_shapes(jax.make_jaxpr(fold)(state).jaxpr)
    assert stack[1:] in _dot_shapes(jax.make_jaxpr(fold)(state).jaxpr)
    finite = lambda s: adapter.folded_finite(s.params, s.opt_state, s.key, s.step)  # noqa: E731
    assert bool(finite(state)) and stack not in _dot_shapes(jax.make_jaxpr(finite)(state).jaxpr)
    huge = state._replace(opt_state=state.opt_state._replace(acc=jax.tree.map(lambda a: jnp.full_like(a, 3e38), state.opt_state.acc)))
    assert not bool(finite(huge))
    assert not bool(zojax.optim.fused.all_finite(fold(huge)[0]))


def test_replay_of_an_adapter_run_is_bitwise():
    noise = LowRank(rank=1, refresh_every=2)
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=2, adapter=True)
    optimizer = zojax.lozo_adapter(0.05, noise=noise, members=2)
    state, frozen = zojax.init(_params(), spec, optimizer, KEY)
    log = zojax.SeedLog.new(KEY, spec)
    for batch in _batches(5):
        state, info = zojax.step(state, frozen, batch, loss_fn=linear_loss, spec=spec, optimizer=optimizer)
        log.record(info.step, info.coeffs, info.applied)
    trained = zojax.effective_params(optimizer, state.params, state.opt_state, state.key, state.step)
    replayed = zojax.replay(_params(), log, optimizer)
    for name in trained:
        np.testing.assert_array_equal(replayed[name], trained[name])
