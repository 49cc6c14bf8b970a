"""Dense Rademacher (±1) directions."""

from __future__ import annotations

import dataclasses

from zojax.directions.base import _Layout

__all__ = ["Rademacher"]


@dataclasses.dataclass(frozen=True)
class Rademacher(_Layout):
    """Dense ±1 directions."""

    stacked: str | None = None

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction: 1."""
        return 1.0
