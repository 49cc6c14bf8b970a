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
