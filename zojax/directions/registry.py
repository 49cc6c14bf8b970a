"""The registered direction kinds: the one list of them that the config, the seed log, the
trainer and the benchmarks read. Adding a kind is its module and one line here."""

from __future__ import annotations

from zojax.directions.base import DirectionKind
from zojax.directions.factorized import Factorized
from zojax.directions.gaussian import Gaussian
from zojax.directions.lowrank import LowRank
from zojax.directions.rademacher import Rademacher
from zojax.directions.rademacher_lowrank import RademacherLowRank

__all__ = ["KINDS", "METHODS", "Noise", "kind_from_dict"]

#: Every direction kind, by its class name (the name a seed log records).
KINDS: dict[str, type[DirectionKind]] = {
    cls.__name__: cls for cls in (Gaussian, Rademacher, LowRank, Factorized, RademacherLowRank)
}

#: The kinds a config's ``zo.method`` names (``fo``, the first-order baseline, is no kind).
METHODS: dict[str, type[DirectionKind]] = {cls.method: cls for cls in KINDS.values() if cls.method}

#: Any direction kind (the type of ``ZOSpec.noise``).
Noise = DirectionKind


def kind_from_dict(d: dict) -> DirectionKind:
    """The kind a :meth:`DirectionKind.to_dict` description names.

    >>> kind_from_dict(LowRank(rank=2, refresh_every=50).to_dict())
    LowRank(rank=2, refresh_every=50, vectors='dense', stacked=None)
    """
    d = dict(d)
    kind = d.pop("kind")
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; known: {sorted(KINDS)}")
    return KINDS[kind](**d)
