"""MeZO-style factorized high-rank directions: low-rank factors fresh every step, scaled to unit variance."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from zojax.directions.lowrank import LowRank

__all__ = ["Factorized"]


@dataclasses.dataclass(frozen=True)
class Factorized(LowRank):
    """MeZO-style factorized high-rank directions ``Z = V U^T / sqrt(rank)``.

    Both factors are fresh every step (``refresh_every=1``); each entry of ``Z`` has unit
    variance like MeZO's Gaussian, yet ``Z`` is scored through the low-rank path.
    """

    rank: int = 128
    refresh_every: int = 1

    method: ClassVar[str | None] = "factorized"

    @classmethod
    def from_config(cls, zo, stacked: str | None) -> Factorized:
        return cls(rank=zo.rank, vectors=zo.vectors, stacked=stacked)

    @property
    def scale(self) -> float:
        return float(self.rank) ** -0.5
