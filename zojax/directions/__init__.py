"""Direction kinds: how a population member's direction of each leaf is drawn from keys.

Every kind implements one contract (:class:`~zojax.directions.base.DirectionKind`): draw a leaf
(:meth:`~zojax.directions.base.DirectionKind.draw`) or rows of it, perturb a weight, sum a
population into a gradient, bound its entries (``max_abs``), describe itself for the seed log.
One module per kind (``zojax/directions/<kind>.py``) and one registry of them
(:data:`~zojax.directions.registry.KINDS`), read by the config, the seed log, the trainer and the
benchmarks: adding a kind is its module and one registry line.
"""

from zojax.directions.base import NORMAL_MAX, DirectionKind
from zojax.directions.draw import draw_directions, is_factored
from zojax.directions.factorized import Factorized
from zojax.directions.gaussian import Gaussian
from zojax.directions.lowrank import LowRank, LowRankDirection
from zojax.directions.rademacher import Rademacher
from zojax.directions.registry import KINDS, METHODS, Noise, kind_from_dict

__all__ = [
    "DirectionKind",
    "Gaussian",
    "Rademacher",
    "LowRank",
    "Factorized",
    "Noise",
    "LowRankDirection",
    "KINDS",
    "METHODS",
    "NORMAL_MAX",
    "kind_from_dict",
    "draw_directions",
    "is_factored",
]
