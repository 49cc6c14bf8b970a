"""Dense Gaussian directions (MeZO)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from zojax import random as zrandom
from zojax.directions.base import NORMAL_MAX, DirectionKind

__all__ = ["Gaussian"]


@dataclasses.dataclass(frozen=True)
class Gaussian(DirectionKind):
    """Dense N(0, I) directions (MeZO), from :func:`zojax.random.normal`."""

    stacked: str | None = None

    method: ClassVar[str | None] = "mezo"

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction (for cheap overflow checks)."""
        return NORMAL_MAX

    def dense(self, key, shape, dtype) -> jax.Array:
        return zrandom.normal(key, shape, dtype)

    def dense_rows(self, key, shape, dtype, rows) -> jax.Array:
        return zrandom.normal_rows(key, jnp.asarray(rows), tuple(shape)[1:], dtype)
