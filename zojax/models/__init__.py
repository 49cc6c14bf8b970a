"""Model families (one module each) and HF / GGUF loading and export.

>>> from zojax.models import from_pretrained, save_pretrained, generate   # doctest: +SKIP
>>> model, config, tok = from_pretrained("smollm2-135m")                   # doctest: +SKIP
"""

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
    "FAMILIES",
    "LoadError",
    "family_for",
    "from_pretrained",
    "generate",
    "register_family",
    "save_pretrained",
]
