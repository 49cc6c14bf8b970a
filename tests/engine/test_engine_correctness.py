"""The engine never trains in the wrong direction silently.

Each test here was written against a defect that let a run finish with wrong numbers
(estimator/scoring mismatches, ties, guessed layer stacks, colliding leaf keys, LoZO-M's
recursion, vector losses, overflowing updates) and fails on it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import zojax
from zojax import nn
from zojax.directions import Factorized, Gaussian, LowRank, LowRankDirection
from zojax.estimators import ESTIMATORS, SIDED_ONLY, centered_rank, shaped
from zojax.paths import path_hash

KEY = jax.random.PRNGKey(3)


def bowl(params, batch):
    return jnp.sum((params["w"] - batch) ** 2)


# --- estimators and scoring agree --------------------------------------------------------


@pytest.mark.parametrize("sided", ["two", "one"])
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_sided_estimator_pair_descends_or_is_refused(sided, estimator):
    if SIDED_ONLY.get(estimator, sided) != sided:
        with pytest.raises(ValueError, match=f"estimator '{estimator}' needs sided"):
            zojax.ZOSpec(sided=sided, estimator=estimator)
        return
    spec = zojax.ZOSpec(noise=Gaussian(), eps=1e-3, members=4, sided=sided, estimator=estimator)
    lr = {"two_sided": 0.05, "one_sided": 0.05, "sign": 0.02, "zscore": 0.02, "rank": 0.1, "fzoo": 0.02}[estimator]
    opt = zojax.zo_sgd(lr)
    state, frozen = zojax.init({"w": jnp.zeros(4)}, spec, opt, KEY)
    target = jnp.ones(4)
    for _ in range(60):
        state, info = zojax.step(state, frozen, target, loss_fn=bowl, spec=spec, optimizer=opt)
    assert float(bowl(state.params, target)) < 0.5 * float(bowl({"w": jnp.zeros(4)}, target))


def test_one_sided_losses_put_the_perturbed_loss_first():
    spec = zojax.ZOSpec(noise=Gaussian(), eps=0.5, members=3, sided="one")
    losses = zojax.score(bowl, {"w": jnp.zeros(4)}, jnp.ones(4), KEY, 0, spec)
    np.testing.assert_allclose(losses[:, 1], 4.0)  # the base loss is the reference column
    assert not np.allclose(losses[:, 0], 4.0)


def test_tied_losses_get_equal_ranks_and_no_signal():
    assert centered_rank(jnp.full((3, 2), 0.7)).tolist() == [[0.0, 0.0]] * 3
    np.testing.assert_array_equal(shaped(centered_rank)(jnp.ones((4, 2)), 1e-3), 0.0)
    ranks = centered_rank(jnp.array([2.0, 1.0, 2.0, 0.0]))
    assert ranks[0] == ranks[2] and ranks[0] > ranks[1] > ranks[3]
    # one-sided with a 0/1 objective: members whose perturbation changed nothing get zero
    coeffs = shaped(centered_rank)(jnp.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]), 1e-3)
    assert coeffs[0] == coeffs[2] == 0.0 and coeffs[1] < 0


def test_non_scalar_loss_is_refused_with_its_shape():
    spec = zojax.ZOSpec(members=2)
    with pytest.raises(ValueError, match=r"scalar loss per member; it returned shape \(4,\)"):
        zojax.score(lambda p, b: (p["w"] - b) ** 2, {"w": jnp.zeros(4)}, jnp.ones(4), KEY, 0, spec)
    with pytest.raises(ValueError, match="scalar loss"):
        zojax.score(lambda p, b: (p["w"] - b) ** 2, {"w": jnp.zeros(4)}, jnp.ones(4), KEY, 0,
                    zojax.ZOSpec(members=2, sided="one"))


# --- which leaves are matrices, and which leaf is which ----------------------------------


class Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 3, rngs=rngs)


class ListedLayers(nnx.Module):
    """The usual NNX model: a list of layers, nothing stacked."""

    def __init__(self, rngs):
        self.layers = nnx.List([Block(rngs), Block(rngs)])


def test_nnx_list_of_layers_is_not_guessed_to_be_stacked():
    params = nnx.state(ListedLayers(nnx.Rngs(0)), nnx.Param)
    noise = LowRank(rank=1)
    dirs = zojax.draw_directions(params, noise, KEY, 0, 0)
    kernel = dirs["layers"][0]["lin"]["kernel"]
    kernel = kernel.value if hasattr(kernel, "value") else kernel
    assert isinstance(kernel, LowRankDirection) and kernel.v.shape == (4, 1)
    # ...and zo_sgd decays that kernel but not the bias
    opt = zojax.zo_sgd(0.1, weight_decay=0.5)
    flat = {"layers/0/lin/kernel": jnp.ones((4, 3)), "layers/0/lin/bias": jnp.ones(3)}
    grad = zojax.ZOGrad(KEY, jnp.int32(0), jnp.zeros(1), noise)
    updates, _ = opt.update(grad, opt.init(flat), flat)
    np.testing.assert_allclose(updates["layers/0/lin/kernel"], -0.05)
    np.testing.assert_allclose(updates["layers/0/lin/bias"], 0.0)


def test_declared_stacks_decide_matrix_or_vector():
    stacked = LowRank(rank=1, stacked=r"^blocks/")
    d = stacked.draw(KEY, 0, 0, "blocks/norm/scale", (5, 8), jnp.float32)
    assert not isinstance(d, LowRankDirection) and d.shape == (5, 8)  # 5 layers of vectors
    d = stacked.draw(KEY, 0, 0, "blocks/lin/kernel", (5, 8, 3), jnp.float32)
    assert d.v.shape == (5, 8, 1)  # 5 layers of matrices, one factor each
    d = LowRank(rank=1).draw(KEY, 0, 0, "blocks/norm/scale", (5, 8), jnp.float32)
    assert isinstance(d, LowRankDirection)  # undeclared: a (5, 8) matrix


def test_colliding_leaf_names_are_refused():
    params = {"a/b": jnp.zeros(2), "a": {"b": jnp.ones(2)}}
    with pytest.raises(ValueError, match="same path name 'a/b'"):
        zojax.init(params, zojax.ZOSpec(), zojax.zo_sgd(0.1), KEY)
    with pytest.raises(ValueError, match="same path name"):
        zojax.partition(params)


def test_leaf_keys_do_not_collide_over_many_realistic_names():
    names = [f"model/layers/{i}/block_{j}/proj_{k}/kernel" for i in range(100) for j in range(40) for k in range(25)]
    assert len({path_hash(n) for n in names}) == len(names)  # 100k names; crc32 & 0x7fffffff collided here


# --- LoZO-M against its recursion written out ----------------------------------------------


def _reference_lozo_m(leaves, coeff_steps, *, noise, lr, beta, wd, steps=None):
    """The official LoZO-M recursion (K members averaged), written plainly with numpy; ``steps`` are
    the steps that reached the optimiser (default: every step from 0)."""
    w = {p: np.array(x, np.float64) for p, x in leaves.items()}
    momentum, last = {}, None
    for step, coeffs in zip(range(len(coeff_steps)) if steps is None else steps, coeff_steps):
        k = len(coeffs)
        for path, x in w.items():
            dirs = [noise.draw(KEY, step, m, path, x.shape, jnp.float32) for m in range(k)]
            if isinstance(dirs[0], LowRankDirection):
                v = [np.asarray(d.v, np.float64) for d in dirs]
                u = [np.asarray(d.u, np.float64) for d in dirs]
                if last is None:
                    n = [coeffs[m] * u[m] for m in range(k)]
                else:
                    n = momentum[path]
                    if step // noise.refresh_every != last // noise.refresh_every:
                        v_old = [np.asarray(noise.draw(KEY, last, m, path, x.shape, jnp.float32).v)
                                 for m in range(k)]
                        n = [n[m] @ v_old[m].T @ v[m] / x.shape[0] for m in range(k)]
                    n = [beta * n[m] + (1 - beta) * coeffs[m] * u[m] for m in range(k)]
                momentum[path] = n
                update = sum(v[m] @ n[m].T for m in range(k)) / k + wd * x
            else:
                estimate = sum(coeffs[m] * np.asarray(dirs[m], np.float64) for m in range(k)) / k
                n = estimate if last is None else beta * momentum[path] + (1 - beta) * estimate
                momentum[path] = n
                update = n  # no decay on vectors
            w[path] = x - lr * update
        last = step
    return w


def test_lozo_m_follows_the_official_recursion():
    noise = LowRank(rank=2, refresh_every=2)
    leaves = {"w": jax.random.normal(KEY, (4, 3)), "b": jnp.linspace(-1, 1, 3)}
    coeff_steps = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (6, 3)))  # K = 3, three V windows
    lr, beta, wd = 0.1, 0.7, 0.2
    opt = zojax.lozo_m(lr, beta, wd, noise=noise, members=3)
    params, state = dict(leaves), opt.init(leaves)
    for step, coeffs in enumerate(coeff_steps):
        grad = zojax.ZOGrad(KEY, jnp.int32(step), jnp.asarray(coeffs, jnp.float32), noise)
        updates, state = opt.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    want = _reference_lozo_m(leaves, coeff_steps, noise=noise, lr=lr, beta=beta, wd=wd)
    for path in leaves:
        np.testing.assert_allclose(params[path], want[path], rtol=2e-5, atol=2e-6, err_msg=path)


def test_lozo_m_reprojects_when_the_first_step_of_a_window_was_skipped():
    """A skipped step (a non-finite loss) never reaches the optimiser: after steps 0 and 1 the next
    update may be step 3, the first one of its V window the optimiser sees. Its momentum must still be
    re-projected onto the new V (the window changed), though ``3 % refresh_every != 0``."""
    noise = LowRank(rank=2, refresh_every=2)
    leaves = {"w": jax.random.normal(KEY, (4, 3)), "b": jnp.linspace(-1, 1, 3)}
    steps = [0, 1, 3, 4, 7, 8]  # steps 2 and 6, each the first of a window, skipped
    coeff_steps = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (len(steps), 3)))
    lr, beta, wd = 0.1, 0.7, 0.2
    opt = zojax.lozo_m(lr, beta, wd, noise=noise, members=3)
    params, state = dict(leaves), opt.init(leaves)
    for step, coeffs in zip(steps, coeff_steps):
        grad = zojax.ZOGrad(KEY, jnp.int32(step), jnp.asarray(coeffs, jnp.float32), noise)
        updates, state = opt.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    want = _reference_lozo_m(leaves, coeff_steps, noise=noise, lr=lr, beta=beta, wd=wd, steps=steps)
    for path in leaves:
        np.testing.assert_allclose(params[path], want[path], rtol=2e-5, atol=2e-6, err_msg=path)


# --- the update's directions are the scored ones -------------------------------------------


@pytest.mark.parametrize("noise", [Gaussian(), LowRank(rank=2), Factorized(rank=4)], ids=lambda n: type(n).__name__)
def test_update_uses_exactly_the_scored_directions(noise):
    params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
    coeffs = jnp.array([0.5, -2.0, 1.0])
    eps = 0.25
    scored = []
    for m in range(3):
        dirs = zojax.draw_directions(params, noise, KEY, 4, m)
        perturbed = zojax.scoring.perturb(params, dirs, eps, noise)
        scored.append(jax.tree.map(lambda p, x: (p - x) / eps, perturbed, params))
    want = jax.tree.map(lambda *z: sum(c * zi for c, zi in zip(coeffs, z)) / 3, *scored)
    got = zojax.dense_gradient(zojax.ZOGrad(KEY, jnp.int32(4), coeffs, noise), params)
    for path in params:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6, err_msg=path)


# --- the adapter path never copies the base weight per member -----------------------------


def _scoring_temp_bytes(adapter: bool) -> int:
    def loss(params, batch):
        return jnp.sum(nn.dense(batch, params["w"]))

    spec = zojax.ZOSpec(noise=LowRank(rank=1), members=8, adapter=adapter)
    w = jnp.ones((256, 256))
    compiled = jax.jit(lambda p, b: zojax.score(loss, p, b, KEY, 0, spec)).lower({"w": w}, jnp.ones((2, 256))).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_adapter_path_never_forms_perturbed_weights_in_the_compiled_program():
    weight_bytes = 256 * 256 * 4
    assert _scoring_temp_bytes(adapter=True) < weight_bytes  # less than one copy of w for 16 scored states
    assert _scoring_temp_bytes(adapter=False) >= 8 * weight_bytes  # the measure sees per-member copies


# --- non-finite learning rates and updates -------------------------------------------------


def test_non_finite_eps_and_learning_rates_are_refused():
    with pytest.raises(ValueError, match="eps must be a finite number"):
        zojax.ZOSpec(eps=float("inf"))
    for make in (lambda lr: zojax.zo_sgd(lr), lambda lr: zojax.lozo_m(lr, noise=LowRank(), members=1)):
        with pytest.raises(ValueError, match="learning_rate must be a finite number"):
            make(float("inf"))
        with pytest.raises(ValueError, match="learning_rate must be a finite number"):
            make(float("nan"))


@pytest.mark.parametrize("optimizer", [zojax.zo_sgd(1e38), zojax.zo_sgd(lambda count: jnp.inf), optax.chain(zojax.zo_sgd(1e38))],
                         ids=["overflow", "schedule", "chained"])
def test_update_that_leaves_non_finite_weights_is_skipped(optimizer):
    spec = zojax.ZOSpec(members=2)
    start = {"w": jnp.ones(3)}
    state, frozen = zojax.init(jax.tree.map(jnp.copy, start), spec, optimizer, KEY)
    # finite losses and coefficients (~100), an update of ~1e40 that float32 cannot hold
    state, info = zojax.step(state, frozen, jnp.ones(3), loss_fn=lambda p, b: 100 * jnp.sum(p["w"] * b),
                             spec=spec, optimizer=optimizer)
    assert bool(jnp.all(jnp.isfinite(info.losses)))
    assert not bool(info.applied) and int(state.skipped) == 1 and int(state.step) == 1
    np.testing.assert_array_equal(state.params["w"], start["w"])


@pytest.mark.parametrize("noise", [Gaussian(), zojax.Rademacher(), LowRank(rank=2), Factorized(rank=4)],
                         ids=["gaussian", "rademacher", "lowrank", "factorized"])
def test_zo_sgd_bounds_its_new_weights_without_regenerating_directions(noise):
    from zojax.optim.transforms import update_bound

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
    for lr, wd in ((0.3, 0.0), (2.0, 0.5)):
        opt = zojax.zo_sgd(lr, weight_decay=wd)
        for step in range(5):
            grad = zojax.ZOGrad(KEY, jnp.int32(step), jnp.asarray(rng.normal(size=3) * 10, jnp.float32), noise)
            updates, _ = opt.update(grad, opt.init(params), params)
            new = optax.apply_updates(params, updates)
            largest = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(new))
            assert largest <= float(update_bound(opt, grad, opt.init(params), params))


def test_the_bound_is_zo_sgds_own_and_a_wrapper_drops_it():
    """zo_sgd's bound is a typed capability (BoundedTransformation); optax.chain and masked give a plain
    transformation without one, and the step then checks the update exactly (the "chained" case above)."""
    from zojax.optim import BoundedTransformation, update_bound

    opt, params = zojax.zo_sgd(0.1), {"w": jnp.ones(3)}
    grad = zojax.ZOGrad(KEY, jnp.int32(0), jnp.ones(2), Gaussian())
    assert isinstance(opt, BoundedTransformation)
    assert update_bound(opt, grad, opt.init(params), params) is not None
    for wrapped in (optax.chain(opt), optax.masked(opt, {"w": True})):
        assert update_bound(wrapped, grad, wrapped.init(params), params) is None


def test_a_bound_too_large_falls_back_to_the_exact_check():
    # weights near float32's largest value: the cheap bound cannot vouch for the update, the exact check can
    spec, opt = zojax.ZOSpec(members=1), zojax.zo_sgd(1e-3)
    start = {"w": jnp.array([2e38, 1.0, -1.0], jnp.float32)}
    state, frozen = zojax.init(jax.tree.map(jnp.copy, start), spec, opt, KEY)
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
    state = zojax.ZOState(params, opt.init(params), jnp.copy(KEY), jnp.int32(0), jnp.int32(0))

    def loss(p, b):  # coefficients ~1e3 from w alone; h moves by ~1e3 z, past float16's largest value
        return 1e3 * jnp.sum(p["w"] * b)

    frozen = {"h": None, "w": None}  # both leaves train
    state, info = zojax.step(state, frozen, jnp.ones(3), loss_fn=loss, spec=spec, optimizer=opt)
    grad = zojax.ZOGrad(KEY, jnp.int32(0), info.coeffs, spec.noise)
    overflowed, _ = apply_update(opt, grad, start, opt.init(start))
    assert not bool(jnp.all(jnp.isfinite(overflowed["h"])))  # the update, applied, would overflow float16
    assert bool(jnp.all(jnp.isfinite(info.losses)))
    assert not bool(info.applied) and int(state.skipped) == 1
    for name in start:
        np.testing.assert_array_equal(state.params[name], start[name])


# --- replay refuses directions it cannot regenerate ----------------------------------------


def test_replay_refuses_a_log_from_another_prng_or_key_derivation():
    spec, opt = zojax.ZOSpec(members=2), zojax.zo_sgd(0.1)
    for field, value in (("prng_impl", "rbg"), ("key_derivation", "crc32 v1")):
        log = zojax.SeedLog.new(KEY, spec)
        log.header[field] = value
        with pytest.raises(ValueError, match="directions would differ"):
            zojax.replay({"w": jnp.zeros(3)}, log, opt)
