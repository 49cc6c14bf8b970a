"""The registered direction kinds, by the name a seed log and a config use."""

from __future__ import annotations

from zojax.directions.factorized import Factorized
from zojax.directions.gaussian import Gaussian
from zojax.directions.lowrank import LowRank
from zojax.directions.rademacher import Rademacher

__all__ = ["KINDS", "Noise"]

#: Every direction kind, by its class name (the name a seed log records).
KINDS: dict[str, type] = {cls.__name__: cls for cls in (Gaussian, Rademacher, LowRank, Factorized)}

Noise = Gaussian | Rademacher | LowRank
