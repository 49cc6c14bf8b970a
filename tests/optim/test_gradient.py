"""zojax.optim.gradient: the dense gradient of a ZOGrad is the mean of its scored directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax.directions import Factorized, Gaussian, LowRank

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


def test_lowrank_update_matches_dense_formula():
    params = {"w": jnp.ones((5, 4))}
    noise = LowRank(rank=2)
    coeffs = jnp.array([0.5, -2.0])
    grad = zojax.ZOGrad(KEY, jnp.int32(3), coeffs, noise)
    expected = sum(c * noise.draw(KEY, 3, k, "w", (5, 4), jnp.float32).dense() for k, c in enumerate(coeffs)) / 2
    np.testing.assert_allclose(zojax.dense_gradient(grad, params)["w"], expected, rtol=1e-5)


@pytest.mark.parametrize("noise", [Gaussian(), LowRank(rank=2), Factorized(rank=4)], ids=lambda n: type(n).__name__)
def test_update_uses_exactly_the_scored_directions(noise):
    params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}
    coeffs = jnp.array([0.5, -2.0, 1.0])
    eps = 0.25
    scored = []
    for m in range(3):
        dirs = zojax.draw_directions(params, noise, KEY3, 4, m)
        perturbed = zojax.scoring.perturb(params, dirs, eps, noise)
        scored.append(jax.tree.map(lambda p, x: (p - x) / eps, perturbed, params))
    want = jax.tree.map(lambda *z: sum(c * zi for c, zi in zip(coeffs, z)) / 3, *scored)
    got = zojax.dense_gradient(zojax.ZOGrad(KEY3, jnp.int32(4), coeffs, noise), params)
    for path in params:
        np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6, err_msg=path)
