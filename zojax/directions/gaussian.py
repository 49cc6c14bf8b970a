"""Dense Gaussian directions (MeZO)."""

from __future__ import annotations

import dataclasses

from zojax.directions.base import NORMAL_MAX, _Layout

__all__ = ["Gaussian"]


@dataclasses.dataclass(frozen=True)
class Gaussian(_Layout):
    """Dense N(0, I) directions (MeZO)."""

    stacked: str | None = None

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction (for cheap overflow checks)."""
        return NORMAL_MAX
