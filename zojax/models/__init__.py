"""Model families (one module each) and HF / GGUF loading and export.

A family module (``zojax.models.llama``, ``zojax.models.opt``) holds only what its architecture
does differently; the shared decoder is :mod:`zojax.models.decoder` (built from
:mod:`zojax.models.layers`), and :class:`Family` writes down what a family provides.

>>> from zojax.models import from_pretrained, save_pretrained, generate   # doctest: +SKIP
>>> model, config, tok = from_pretrained("smollm2-135m")                   # doctest: +SKIP
"""

from zojax.models.delta import DeltaError, apply_delta, load_delta, save_delta, weights_hash
from zojax.models.family import Family, projections, sharding_rules, stacked_paths
from zojax.models.generate import generate
from zojax.models.loading import (
    FAMILIES,
    LoadError,
    family_for,
    from_pretrained,
    register_family,
    save_pretrained,
)

__all__ = [
    "DeltaError",
    "apply_delta",
    "load_delta",
    "save_delta",
    "weights_hash",
    "FAMILIES",
    "Family",
    "LoadError",
    "family_for",
    "from_pretrained",
    "generate",
    "register_family",
    "save_pretrained",
    "projections",
    "sharding_rules",
    "stacked_paths",
]
