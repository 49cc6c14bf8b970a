"""Drawing the directions of a whole trainable tree, and telling factored directions apart."""

from __future__ import annotations

import jax

from zojax.directions.base import DirectionKind
from zojax.directions.lowrank import LowRankDirection
from zojax.paths import path_str
from zojax.types import PyTree

__all__ = ["draw_directions", "is_factored"]


def is_factored(d) -> bool:
    """Whether a drawn direction is kept as factors (a :class:`LowRankDirection`) rather than an
    array: the ``is_leaf`` of a tree of directions."""
    return isinstance(d, LowRankDirection)


def draw_directions(trainable: PyTree, noise: DirectionKind, key, step, member, lazy: bool = False) -> PyTree:
    """Directions for every non-None leaf of ``trainable`` (same structure, None kept); ``lazy``: low-rank
    factors left for the model to draw (see :meth:`~zojax.directions.DirectionKind.draw`).

    >>> import jax, jax.numpy as jnp
    >>> from zojax.directions import LowRank
    >>> d = draw_directions({"w": jnp.ones((3, 2))}, LowRank(rank=1), jax.random.PRNGKey(0), 0, 0)
    >>> d["w"].v.shape, d["w"].u.shape
    ((3, 1), (2, 1))
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, x: noise.draw(key, step, member, path_str(p), x.shape, x.dtype, lazy), trainable
    )
