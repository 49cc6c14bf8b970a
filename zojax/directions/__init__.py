"""Direction kinds: how a population member's direction of each leaf is drawn from keys.

One module per kind (:mod:`~zojax.directions.gaussian`, :mod:`~zojax.directions.rademacher`,
:mod:`~zojax.directions.lowrank`, :mod:`~zojax.directions.factorized`) and a registry of them
(:mod:`~zojax.directions.registry`); :mod:`~zojax.directions.draw` draws a leaf's or a tree's.
"""

from zojax.directions.base import NORMAL_MAX
from zojax.directions.draw import dense_direction, draw_directions, leaf_direction
from zojax.directions.factorized import Factorized
from zojax.directions.gaussian import Gaussian
from zojax.directions.lowrank import LowRank, LowRankDirection
from zojax.directions.rademacher import Rademacher
from zojax.directions.registry import KINDS, Noise

__all__ = [
    "Gaussian",
    "Rademacher",
    "LowRank",
    "Factorized",
    "Noise",
    "LowRankDirection",
    "KINDS",
    "NORMAL_MAX",
    "dense_direction",
    "leaf_direction",
    "draw_directions",
]
