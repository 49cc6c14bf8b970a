"""Dense Rademacher (±1) directions."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from zojax import random as zrandom
from zojax.directions.base import DirectionKind

__all__ = ["Rademacher"]


@dataclasses.dataclass(frozen=True)
class Rademacher(DirectionKind):
    """Dense ±1 directions, from :func:`zojax.random.rademacher` (64 signs per hash)."""

    stacked: str | None = None

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction: 1."""
        return 1.0

    def dense(self, key, shape, dtype) -> jax.Array:
        return zrandom.rademacher(key, shape, dtype)

    def dense_rows(self, key, shape, dtype, rows) -> jax.Array:
        return zrandom.rademacher_rows(key, jnp.asarray(rows), tuple(shape)[1:], dtype)
