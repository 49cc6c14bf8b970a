"""zojax.directions.draw: a leaf's direction depends on its own path, step and member only."""

import jax
import jax.numpy as jnp
import numpy as np

import zojax
from zojax.directions import Gaussian

KEY = jax.random.PRNGKey(0)


def test_leaf_noise_independent_of_other_leaves_and_order():
    spec_noise = Gaussian()
    small = {"x": jnp.zeros((5, 3))}
    bigger = {"a_new": jnp.zeros(7), "x": jnp.zeros((5, 3)), "z": {"deep": jnp.zeros(2)}}
    d1 = zojax.draw_directions(small, spec_noise, KEY, 4, 1)["x"]
    d2 = zojax.draw_directions(bigger, spec_noise, KEY, 4, 1)["x"]
    np.testing.assert_array_equal(d1, d2)
    # a different member or step gives different noise
    assert not np.allclose(d1, zojax.draw_directions(small, spec_noise, KEY, 4, 2)["x"])
    assert not np.allclose(d1, zojax.draw_directions(small, spec_noise, KEY, 5, 1)["x"])


def test_two_leaves_are_uncorrelated():
    tree = {"a": jnp.zeros(20000), "b": jnp.zeros(20000)}
    d = zojax.draw_directions(tree, Gaussian(), KEY, 0, 0)
    corr = np.corrcoef(np.asarray(d["a"]), np.asarray(d["b"]))[0, 1]
    assert abs(corr) < 4 / np.sqrt(20000)
    assert abs(float(d["a"].std()) - 1.0) < 0.03
