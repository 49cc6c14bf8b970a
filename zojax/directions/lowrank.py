"""LoZO's low-rank directions ``V U^T`` with a lazy ``V``, and the factors of one direction."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zojax.directions.base import NORMAL_MAX, _Layout

__all__ = ["LowRank", "LowRankDirection"]


@dataclasses.dataclass(frozen=True)
class LowRank(_Layout):
    """LoZO directions ``Z = V U^T`` for every matrix leaf.

    For a weight stored ``(..., d_in, d_out)``, ``V`` (``d_in x rank``) is resampled only
    every ``refresh_every`` steps (the lazy factor) and ``U`` (``d_out x rank``) is fresh
    every step -- LoZO's ``U V^T`` for torch's ``(d_out, d_in)`` layout. Leading axes
    (stacked layers, declared by ``stacked``) get independent factors. 1-D leaves get dense
    Gaussian directions (``vectors="dense"``, as the official LoZO) or are frozen
    (``vectors="exclude"``); a stacked per-layer vector (shape (L, d) on a path ``stacked``
    matches) counts as 1-D.

    The lazy factor sits on the stored first axis (``d_in``). For an embedding table stored
    ``(vocab, d)`` that is the vocabulary side -- the input side of the lookup, as for every
    linear layer -- where the official LoZO, going by torch's ``(out, in)`` layout, puts
    it on ``d``. Each entry of ``V U^T`` has the same variance either way and both factors
    are drawn row by row for the looked-up tokens, so cost and variance do not pick a
    side; zojax keeps one rule for every matrix.

    >>> LowRank(rank=2, refresh_every=100).rank
    2
    """

    rank: int = 2
    refresh_every: int = 100
    vectors: str = "dense"
    stacked: str | None = None

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LowRank: rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise ValueError(
                f"LowRank: refresh_every must be an integer >= 1, got {self.refresh_every!r}"
            )
        if self.vectors not in ("dense", "exclude"):
            raise ValueError(f"LowRank: vectors must be 'dense' or 'exclude', got {self.vectors!r}")

    @property
    def scale(self) -> float:
        return 1.0

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction: ``rank`` products of two normals, scaled
        (and the dense normals of 1-D leaves)."""
        return max(self.rank * NORMAL_MAX**2 * self.scale, NORMAL_MAX)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LowRankDirection:
    """A direction ``v @ u.T`` kept as factors (``u`` already carries any scale)."""

    v: jax.Array
    u: jax.Array

    def dense(self) -> jax.Array:
        return jnp.einsum("...ir,...or->...io", self.v, self.u)
