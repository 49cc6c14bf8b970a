"""Drawing directions: one leaf's, and a whole trainable tree's."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zojax import random as zrandom
from zojax.directions.lowrank import LowRank, LowRankDirection
from zojax.directions.rademacher import Rademacher
from zojax.directions.registry import Noise
from zojax.paths import leaf_key, path_str
from zojax.types import PyTree

__all__ = ["dense_direction", "leaf_direction", "draw_directions"]


def dense_direction(noise: Noise, key, shape, dtype) -> jax.Array:
    """A dense direction: N(0, 1) or ±1 values from :mod:`zojax.random`, which makes several
    values per threefry hash (jax.random spends a whole hash on each), element ``i`` of the
    flattened array a pure function of ``(key, i)``."""
    if isinstance(noise, Rademacher):
        return zrandom.rademacher(key, shape, dtype)
    return zrandom.normal(key, shape, dtype)


def leaf_direction(noise: Noise, key, step, member, path: str, shape, dtype):
    """The direction of one leaf: a dense array, or a :class:`LowRankDirection`."""
    if isinstance(noise, LowRank) and noise.is_matrix(path, shape):
        lead, d_in, d_out = tuple(shape[:-2]), shape[-2], shape[-1]
        step = jnp.asarray(step)
        v_step = (step // noise.refresh_every) * noise.refresh_every
        v = jax.random.normal(
            jax.random.fold_in(leaf_key(key, v_step, member, path), 1), lead + (d_in, noise.rank), dtype
        )
        u = jax.random.normal(
            jax.random.fold_in(leaf_key(key, step, member, path), 0), lead + (d_out, noise.rank), dtype
        )
        if noise.scale != 1.0:
            u = u * jnp.asarray(noise.scale, dtype)
        return LowRankDirection(v, u)
    # 1-D leaves under LowRank are dense Gaussian, as in the official LoZO.
    return dense_direction(noise, leaf_key(key, step, member, path), tuple(shape), dtype)


def draw_directions(trainable: PyTree, noise: Noise, key, step, member) -> PyTree:
    """Directions for every non-None leaf of ``trainable`` (same structure, None kept).

    >>> d = draw_directions({"w": jnp.ones((3, 2))}, LowRank(rank=1), jax.random.PRNGKey(0), 0, 0)
    >>> d["w"].v.shape, d["w"].u.shape
    ((3, 1), (2, 1))
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, x: leaf_direction(noise, key, step, member, path_str(p), x.shape, x.dtype),
        trainable,
    )
