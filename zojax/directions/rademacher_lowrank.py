"""Low-rank directions with ±1 factors: LoZO's ``V U^T`` where every factor entry is a sign.

The whole kind is this module and its line in :mod:`zojax.directions.registry`: it is how a kind
is added. Its factors come from :func:`zojax.random.rademacher` (64 signs per hash, where a
normal factor spends a hash on each value), its 1-D leaves get dense signs, and each entry of
``V U^T`` has variance ``rank`` like LoZO's, with ``|z| <= rank``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from zojax import random as zrandom
from zojax.directions.lowrank import LowRank

__all__ = ["RademacherLowRank"]


@dataclasses.dataclass(frozen=True)
class RademacherLowRank(LowRank):
    """LoZO's low-rank directions (lazy ``V``, fresh ``U``) with ±1 factors and ±1 vectors.

    >>> RademacherLowRank(rank=2).max_abs
    2.0
    """

    method: ClassVar[str | None] = None  # library only: no config method selects it

    @property
    def max_abs(self) -> float:
        """``rank`` products of two signs, scaled (and the signs of 1-D leaves)."""
        return max(self.rank * self.scale, 1.0)

    def dense(self, key, shape, dtype) -> jax.Array:
        return zrandom.rademacher(key, shape, dtype)

    def dense_rows(self, key, shape, dtype, rows) -> jax.Array:
        return zrandom.rademacher_rows(key, jnp.asarray(rows), tuple(shape)[1:], dtype)
