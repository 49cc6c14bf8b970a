"""zojax.optim.scaled (HiZOO, Sparse MeZO) and FZOO (zojax.estimators.fzoo through zo_sgd) on a quadratic,
each against a small reference written here from the paper's rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax.directions import Gaussian, LowRank, Rademacher, draw_directions
from zojax.optim import hizoo, magnitude_mask, sparse_mezo
from zojax.seedlog import SeedLog, replay

KEY = jax.random.PRNGKey(3)
CURV = jnp.linspace(0.5, 4.0, 12)  # a diagonal quadratic with uneven curvature


def quadratic(params, target):
    return jnp.sum(CURV * (params["w"] - target) ** 2)


def _start():
    return {"w": jax.random.normal(jax.random.PRNGKey(1), (12,))}


def _z(noise, step, member, w):
    return np.asarray(draw_directions({"w": jnp.asarray(w, jnp.float32)}, noise, KEY, step, member)["w"], np.float64)


def _loss(w, target):
    return float(np.sum(np.asarray(CURV, np.float64) * (w - target) ** 2))


def _run(spec, opt, steps, target):
    state, frozen = zojax.init(_start(), spec, opt, KEY)
    log = SeedLog.new(KEY, spec)
    history = [np.asarray(state.params["w"], np.float64)]
    for _ in range(steps):
        state, info = zojax.step(state, frozen, target, loss_fn=quadratic, spec=spec, optimizer=opt)
        log.record(info.step, info.coeffs, info.applied, None if info.curvature is None else info.curvature)
        history.append(np.array(state.params["w"], np.float64))
    return history, state, log


def test_fzoo_step_matches_the_papers_rule_and_descends():
    target = jnp.zeros(12)
    eps, lr, k = 1e-2, 0.05, 4
    spec = zojax.ZOSpec(noise=Rademacher(), eps=eps, members=k, sided="one", estimator="fzoo")
    history, _, _ = _run(spec, zojax.zo_sgd(lr), 30, target)
    for t in range(3):  # the reference: theta - lr / (K sigma) sum_k (L_k - L_0) z_k (sigma: std of the K L_k)
        w = history[t]
        zs = [_z(Rademacher(), t, m, w) for m in range(k)]
        perturbed = np.array([_loss(w + eps * z, 0.0) for z in zs])
        sigma = perturbed.std()
        want = w - lr / (k * sigma) * sum((p - _loss(w, 0.0)) * z for p, z in zip(perturbed, zs))
        np.testing.assert_allclose(history[t + 1], want, rtol=1e-4, atol=1e-5)
    assert _loss(history[-1], 0.0) < 0.5 * _loss(history[0], 0.0)


def test_fzoo_needs_one_sided_scoring():
    with pytest.raises(ValueError, match="estimator 'fzoo' needs sided='one'"):
        zojax.ZOSpec(members=4, estimator="fzoo")


def test_hizoo_step_matches_the_official_rule_and_replays():
    target = jnp.full(12, 0.5)
    eps, lr, smooth, k = 1e-2, 0.06, 0.3, 2
    spec = zojax.ZOSpec(noise=Gaussian(), eps=eps, members=k, center=True)
    opt = hizoo(lr, smooth=smooth)
    history, state, log = _run(spec, opt, 40, target)
    h = np.ones(12)
    tgt = np.asarray(target, np.float64)
    for t in range(4):  # the reference: official HiZOO, members averaged
        w = history[t]
        zs = [_z(Gaussian(), t, m, w) for m in range(k)]
        plus = [_loss(w + eps * z / np.sqrt(h), tgt) for z in zs]
        minus = [_loss(w - eps * z / np.sqrt(h), tgt) for z in zs]
        center = _loss(w, tgt)
        curv = [abs(p + q - 2 * center) / (2 * eps**2) for p, q in zip(plus, minus)]
        h = (1 - smooth) * h + smooth * sum(c * h * z**2 for c, z in zip(curv, zs)) / k
        grad = sum((p - q) / (2 * eps) * z for p, q, z in zip(plus, minus, zs)) / k / np.sqrt(h)
        np.testing.assert_allclose(history[t + 1], w - lr * grad, rtol=2e-3, atol=2e-4)
    assert _loss(history[-1], tgt) < 0.5 * _loss(history[0], tgt)
    # curvature is logged: replay rebuilds H and so the weights
    np.testing.assert_allclose(replay(_start(), log, opt)["w"], state.params["w"], rtol=1e-6, atol=1e-6)


def test_hizoo_centre_passes_a_member_to_a_loss_that_takes_one():
    """HiZOO's L(theta) calls a sampling loss (takes_member, e.g. a reward of generated text) with member K."""
    seen = []

    def sampling_loss(params, target, member):
        seen.append(member)
        return quadratic(params, target)

    sampling_loss.takes_member = True
    spec = zojax.ZOSpec(noise=Gaussian(), eps=1e-2, members=2, center=True)
    opt = hizoo(0.05)
    state, frozen = zojax.init(_start(), spec, opt, KEY)
    target = jnp.full(12, 0.5)
    plain, _ = zojax.step(state, frozen, target, loss_fn=quadratic, spec=spec, optimizer=opt)
    state, frozen = zojax.init(_start(), spec, opt, KEY)
    sampled, _ = zojax.step(state, frozen, target, loss_fn=sampling_loss, spec=spec, optimizer=opt)
    np.testing.assert_array_equal(sampled.params["w"], plain.params["w"])
    assert seen and all(m.number.shape == () for m in seen)


def test_hizoo_refuses_a_gradient_without_curvature():
    spec = zojax.ZOSpec(noise=Gaussian(), members=1)
    opt = hizoo(0.01)
    state, frozen = zojax.init(_start(), spec, opt, KEY)
    with pytest.raises(ValueError, match="ZOSpec\\(center=True\\)"):
        zojax.step(state, frozen, jnp.zeros(12), loss_fn=quadratic, spec=spec, optimizer=opt)


def test_sparse_mezo_moves_only_small_weights_refreshes_the_mask_and_replays():
    target = jnp.zeros(12)
    eps, lr, sparsity, every = 1e-2, 0.02, 0.5, 4
    spec = zojax.ZOSpec(noise=Gaussian(), eps=eps, members=2)
    opt = sparse_mezo(lr, sparsity=sparsity, refresh_every=every)
    history, state, log = _run(spec, opt, 9, target)
    for t in range(9):  # the reference: MeZO on the mask of |w| at the last refresh step
        w = history[t]
        m = np.asarray(magnitude_mask(jnp.asarray(history[t - t % every]), sparsity), np.float64)
        assert m.sum() == 6
        zs = [m * _z(Gaussian(), t, i, w) for i in range(2)]
        grad = sum((_loss(w + eps * z, 0.0) - _loss(w - eps * z, 0.0)) / (2 * eps) * z for z in zs) / 2
        np.testing.assert_allclose(history[t + 1], w - lr * grad, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(history[t + 1][m == 0], w[m == 0])
    np.testing.assert_allclose(replay(_start(), log, opt)["w"], state.params["w"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make", [lambda: hizoo(0.1), lambda: sparse_mezo(0.1)], ids=["hizoo", "sparse_mezo"])
def test_scaled_transforms_refuse_low_rank_directions(make):
    spec = zojax.ZOSpec(noise=LowRank(rank=1), members=1, center=True)
    opt = make()
    params = {"w": jnp.ones((4, 3))}
    state, frozen = zojax.init(params, spec, opt, KEY)
    with pytest.raises(ValueError, match="dense directions"):
        zojax.step(state, frozen, jnp.zeros((4, 3)), loss_fn=lambda p, b: jnp.sum((p["w"] - b) ** 2), spec=spec,
                   optimizer=opt)
