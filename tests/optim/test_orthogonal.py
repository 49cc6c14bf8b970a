"""ZO-Muon (zojax.optim.orthogonal) against its rule written out: the polar factor of the dense estimate."""

import jax
import jax.numpy as jnp
import numpy as np

import zojax
from zojax.directions import LowRank, draw_directions

KEY = jax.random.PRNGKey(3)


def test_zo_muon_steps_by_the_polar_factor_of_the_low_rank_estimate_and_descends():
    from zojax.optim import zo_muon

    target = jax.random.normal(jax.random.PRNGKey(2), (6, 5))
    noise = LowRank(rank=2, refresh_every=3)
    eps, lr, k = 1e-2, 0.3, 2
    spec = zojax.ZOSpec(noise=noise, eps=eps, members=k)
    opt = zo_muon(lr, noise=noise)
    start = {"w": jnp.zeros((6, 5))}
    loss = lambda p, b: jnp.sum((p["w"] - b) ** 2)  # noqa: E731
    state, frozen = zojax.init(jax.tree.map(jnp.copy, start), spec, opt, KEY)
    history = [np.zeros((6, 5))]
    for _ in range(60):
        state, info = zojax.step(state, frozen, target, loss_fn=loss, spec=spec, optimizer=opt)
        history.append(np.array(state.params["w"], np.float64))
    tgt = np.asarray(target, np.float64)
    for t in range(3):  # the reference: the estimate formed densely, its polar factor by a full SVD
        w = history[t]
        zs = [np.asarray(draw_directions({"w": jnp.asarray(w, jnp.float32)}, noise, KEY, t, m)["w"].dense(), np.float64)
              for m in range(k)]
        cs = [(np.sum((w + eps * z - tgt) ** 2) - np.sum((w - eps * z - tgt) ** 2)) / (2 * eps) for z in zs]
        left, s, right = np.linalg.svd(sum(c * z for c, z in zip(cs, zs)) / k)
        rank = int(np.sum(s > 1e-5 * s[0]))
        want = w - lr * left[:, :rank] @ right[:rank]
        np.testing.assert_allclose(history[t + 1], want, rtol=1e-3, atol=1e-4)
    assert np.sum((history[-1] - tgt) ** 2) < 0.5 * np.sum(tgt**2)


def test_polar_from_factors_matches_the_svd_polar_factor_without_lapack_calls():
    """Batched factors, one with a zero column (a member whose coefficient is 0) and one rank-deficient pair:
    the SVD's polar factor of the product, from matrix multiplies only -- no LAPACK custom call, whose
    batched kernels deadlocked a two-thread CPU pool when two QRs ran side by side (jaxlib 0.10)."""
    from zojax.optim import polar_from_factors

    rng = np.random.default_rng(0)
    v, u = rng.normal(size=(3, 8, 3)), rng.normal(size=(3, 6, 3))
    u[1, :, 2] = 0.0  # a zero coefficient
    v[2, :, 2] = v[2, :, 0] + 2 * v[2, :, 1]  # a column in the span of the others
    got = np.asarray(polar_from_factors(jnp.asarray(v, jnp.float32), jnp.asarray(u, jnp.float32)))
    for b in range(3):
        left, s, right = np.linalg.svd(v[b] @ u[b].T)
        rank = int(np.sum(s > 1e-5 * s[0]))
        np.testing.assert_allclose(got[b], left[:, :rank] @ right[:rank], atol=2e-5)
    hlo = jax.jit(polar_from_factors).lower(jnp.zeros((3, 8, 3)), jnp.zeros((3, 6, 3))).as_text()
    assert "custom_call" not in hlo
