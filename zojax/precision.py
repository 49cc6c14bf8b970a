"""Perturbations and updates that survive the dtypes a model computes and stores with.

bfloat16 has 8 significant bits: near 1.78 its spacing is 0.0078, so a norm scale perturbed by
``eps = 1e-3`` rounds to the same number at ``+eps`` and ``-eps`` and every loss difference is
exactly 0 (zeroth-order training that trains nothing, silently). Three defences:

* zojax's own models compute with 1-D leaves (norm scales, biases) in :func:`vector_dtype`
  (float32, or the leaf's dtype when wider); large matrices stay in the compute dtype;
* :func:`check_resolution` measures, for every trainable leaf, the fraction of entries whose
  ``+eps`` and ``-eps`` values are the same number in the dtype the model computes that leaf
  with, and refuses (:class:`ResolutionError`) a leaf above 1%; the trainer runs it before step 0;
* :func:`master_dtype` keeps the trainable leaves of bfloat16/float16-stored weights in
  float32 (``zojax.init`` does so), so an update ``lr * c * z`` below the stored weight's spacing
  accumulates instead of vanishing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax.errors import ResolutionError
from zojax.paths import is_matrix, path_str

__all__ = [
    "check_resolution",
    "direction_std",
    "leaf_compute_dtypes",
    "master_dtype",
    "resolution",
    "unresolved_fraction",
    "vector_dtype",
]

#: Above this fraction of unresolved entries a leaf is refused.
MAX_UNRESOLVED = 0.01

PyTree = Any
ComputeDType = Any  # a dtype, or a callable (path, leaf) -> dtype


def vector_dtype(dtype) -> jnp.dtype:
    """The dtype zojax's models compute a 1-D leaf (norm scale, bias) with: float32, or the
    leaf's own dtype when wider. These leaves are few, so the wide dtype costs nothing.

    >>> vector_dtype(jnp.bfloat16), vector_dtype(jnp.float64)
    (dtype('float32'), dtype('float64'))
    """
    return jnp.promote_types(dtype, jnp.float32)


def master_dtype(dtype) -> jnp.dtype:
    """The dtype a trainable leaf stored in ``dtype`` is kept in during training: float32 for
    16-bit floats (bfloat16, float16), where an update below the weight's spacing would vanish;
    any other dtype unchanged.

    >>> master_dtype(jnp.bfloat16), master_dtype(jnp.float32)
    (dtype('float32'), dtype('float32'))
    """
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def master_copies(trainable: PyTree) -> PyTree:
    """``trainable`` with every 16-bit float leaf in :func:`master_dtype` (others untouched)."""
    return jax.tree.map(lambda x: x if x.dtype == master_dtype(x.dtype) else x.astype(master_dtype(x.dtype)), trainable)


def leaf_compute_dtypes(dtype, stacked: str | None = None) -> Callable[[str, jax.Array], jnp.dtype]:
    """The dtype zojax's own models compute each leaf with, under compute dtype ``dtype``:
    :func:`vector_dtype` for (stacks of) 1-D leaves, ``dtype`` for matrices. ``stacked`` is the
    model's stacked-layer regex (``zojax.models.stacked_paths``).

    >>> f = leaf_compute_dtypes(jnp.bfloat16, stacked="^layers/")
    >>> f("layers/norm/scale", jnp.ones((2, 8))), f("layers/q/kernel", jnp.ones((2, 8, 8)))
    (dtype('float32'), dtype(bfloat16))
    """
    dtype = jnp.dtype(dtype)

    def of(path: str, leaf) -> jnp.dtype:
        return dtype if is_matrix(path, jnp.shape(leaf), stacked) else vector_dtype(leaf.dtype)

    return of


@functools.partial(jax.jit, static_argnames=("dtype", "one_sided"))
def unresolved_fraction(w: jax.Array, z: jax.Array, eps, dtype, one_sided: bool = False) -> jax.Array:
    """The fraction of entries for which ``w + eps z`` and ``w - eps z`` (formed in ``w``'s dtype,
    as zojax perturbs) are the same number once cast to ``dtype``; ``one_sided`` compares
    ``w + eps z`` with ``w``.

    >>> w = jnp.full(4, 1.78)
    >>> z = jnp.ones(4)
    >>> float(unresolved_fraction(w, z, 1e-3, jnp.bfloat16)), float(unresolved_fraction(w, z, 1e-3, jnp.float32))
    (1.0, 0.0)
    """
    scale = jnp.asarray(eps, w.dtype)
    plus = (w + scale * z.astype(w.dtype)).astype(w.dtype).astype(dtype)
    minus = w if one_sided else (w - scale * z.astype(w.dtype)).astype(w.dtype)
    return jnp.mean((plus == minus.astype(dtype)).astype(jnp.float32))


def _dtype_rule(compute_dtype: ComputeDType) -> Callable[[str, Any], Any]:
    """``compute_dtype`` as a ``(path, leaf) -> dtype`` rule (jnp.bfloat16 is callable too: a dtype first)."""
    try:
        dtype = jnp.dtype(compute_dtype)
    except TypeError:
        return compute_dtype
    return lambda path, leaf: dtype


def direction_std(noise, path: str, shape) -> float:
    """The standard deviation of one entry of a leaf's direction, from its kind's second moment
    (:meth:`zojax.directions.DirectionKind.second_moment`): 1 for dense Gaussian or Rademacher
    directions, ``scale * sqrt(rank)`` for a low-rank ``V U^T`` (Factorized: 1)."""
    return math.sqrt(noise.second_moment(path, tuple(shape)))


def _measure(trainable: PyTree, spec, compute_dtype: ComputeDType) -> list[tuple[str, jnp.dtype, float]]:
    """``(path, compute dtype, unresolved fraction)`` of every trainable leaf."""
    dtype_of = _dtype_rule(compute_dtype)
    out = []
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(trainable)[0]:
        path = path_str(keypath)
        dtype = jnp.dtype(dtype_of(path, leaf))
        z = jnp.full((), direction_std(spec.noise, path, leaf.shape), leaf.dtype)
        out.append((path, dtype, float(unresolved_fraction(leaf, z, spec.eps, dtype, spec.sided == "one"))))
    return out


def resolution(trainable: PyTree, spec, compute_dtype: ComputeDType) -> dict[str, float]:
    """For every trainable leaf, the fraction of entries whose perturbation does not survive the
    dtype the model computes the leaf with: :func:`unresolved_fraction` with every entry of the
    direction at one standard deviation (:func:`direction_std`). A drawn direction would also count
    the entries where it happens to be near 0 (about 0.4 * spacing / eps of them for a Gaussian,
    whatever the dtype), which carry no signal in any dtype.

    ``spec`` is a :class:`zojax.ZOSpec` (its noise, ``eps`` and ``sided``); ``compute_dtype`` is a
    dtype for every leaf, or ``(path, leaf) -> dtype`` (zojax's models:
    :func:`leaf_compute_dtypes`). ``None`` leaves (frozen ones) are skipped.

    >>> import zojax
    >>> params = {"scale": jnp.full(64, 1.78), "w": jnp.full((8, 8), 0.002)}
    >>> resolution(params, zojax.ZOSpec(), jnp.bfloat16)
    {'scale': 1.0, 'w': 0.0}
    """
    return {path: fraction for path, _, fraction in _measure(trainable, spec, compute_dtype)}


def check_resolution(trainable: PyTree, spec, compute_dtype: ComputeDType, *,
                     max_fraction: float = MAX_UNRESOLVED, ways_out: str | None = None) -> dict[str, float]:
    """:func:`resolution`, and a one-line :class:`ResolutionError` naming the worst leaf when any
    leaf's fraction exceeds ``max_fraction`` (1%): its perturbation would not reach the loss.
    ``ways_out`` replaces the generic advice at the end of the message (the trainer names its
    config keys). Returns the fractions.

    >>> import zojax
    >>> check_resolution({"norm": jnp.full(64, 1.78)}, zojax.ZOSpec(), jnp.bfloat16)
    Traceback (most recent call last):
    ...
    zojax.errors.ResolutionError: leaf 'norm': 100.0% of its entries are the same bfloat16 number at +eps and -eps (eps 0.001), so the loss cannot see its perturbation; compute that leaf in float32, or use a larger eps
    >>> check_resolution({"norm": jnp.full(64, 1.78)}, zojax.ZOSpec(), jnp.float32)
    {'norm': 0.0}
    """
    measured = _measure(trainable, spec, compute_dtype)
    bad = [m for m in measured if m[2] > max_fraction]
    if bad:
        path, dtype, fraction = max(bad, key=lambda m: m[2])
        more = f" ({len(bad) - 1} more leaves too)" if len(bad) > 1 else ""
        advice = ways_out or "compute that leaf in float32, or use a larger eps"
        raise ResolutionError(
            f"leaf {path!r}: {fraction:.1%} of its entries are the same {dtype.name} number at +eps and -eps "
            f"(eps {spec.eps:g}), so the loss cannot see its perturbation{more}; {advice}"
        )
    return {path: fraction for path, _, fraction in measured}
