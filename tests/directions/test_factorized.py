"""zojax.directions.factorized: MeZO-style factorized high-rank directions."""

import jax
import jax.numpy as jnp

from zojax.directions import Factorized

KEY = jax.random.PRNGKey(0)


def test_factorized_has_unit_marginal_variance():
    d = Factorized(rank=128).draw(KEY, 0, 0, "w", (64, 64), jnp.float32)
    assert abs(float(d.dense().var()) - 1.0) < 0.1
