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
  accumulates instead of vanishing -- unless those copies would cost more than
  :data:`MASTER_OVERHEAD` of the weights' memory (full-parameter runs): then the weights stay in
  16 bits and every update is rounded stochastically (:func:`add_rounded`), unbiased, with a key
  derived like the directions' so a replay is bitwise. ZO's promise is inference memory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax.errors import ResolutionError
from zojax.paths import is_matrix, leaf_key, path_str

__all__ = [
    "MASTER_OVERHEAD",
    "add_rounded",
    "check_resolution",
    "direction_std",
    "leaf_compute_dtypes",
    "master_dtype",
    "rounding_key",
    "stochastic_round",
    "use_masters",
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


#: Float32 master copies are kept (``master_weights=None``) while they add at most this share to the
#: memory of all the weights, trained and frozen: always for the usual scopes (576 norm scales, an
#: adapter scope), never for a full-parameter run of 16-bit weights (they would add 100%).
MASTER_OVERHEAD = 0.10


def use_masters(master_weights: bool | None, trainable: PyTree, frozen: PyTree) -> bool:
    """Whether :func:`zojax.init` keeps float32 master copies of the 16-bit trainable leaves:
    ``master_weights`` when given, else whether the copies cost at most :data:`MASTER_OVERHEAD`
    of the weights' memory (a 135M-parameter bfloat16 model trained on its final norm: yes; on all
    of its weights: no, its updates are rounded stochastically).

    >>> w = {"big": jnp.zeros((64, 64), jnp.bfloat16), "scale": jnp.ones(64, jnp.bfloat16)}
    >>> use_masters(None, {"big": None, "scale": w["scale"]}, {"big": w["big"], "scale": None})
    True
    >>> use_masters(None, w, {"big": None, "scale": None}), use_masters(True, w, {"big": None, "scale": None})
    (False, True)
    """
    if master_weights is not None:
        return bool(master_weights)
    leaves = lambda t: [x for x in jax.tree.leaves(t) if x is not None]  # noqa: E731
    extra = sum(x.size * (master_dtype(x.dtype).itemsize - jnp.dtype(x.dtype).itemsize) for x in leaves(trainable))
    total = sum(x.size * jnp.dtype(x.dtype).itemsize for x in leaves(trainable) + leaves(frozen))
    return extra <= MASTER_OVERHEAD * max(total, 1)


def stochastic_round(x: jax.Array, dtype, key) -> jax.Array:
    """``x`` in ``dtype``, rounded to one of its two neighbours there at random, the nearer
    more often: the result's expectation is ``x`` exactly, so updates far below the spacing of a
    16-bit weight still move it on average instead of vanishing under round-to-nearest.

    >>> x = jnp.full(10000, 1.0 + 2.0**-10, jnp.float32)  # 1/8 of bfloat16's spacing above 1
    >>> r = stochastic_round(x, jnp.bfloat16, jax.random.PRNGKey(0)).astype(jnp.float32)
    >>> sorted(set(r.tolist())), round(float(r.mean()) - 1.0, 4)
    ([1.0, 1.0078125], 0.001)
    """
    x = x.astype(jnp.float32)
    near = x.astype(dtype)
    below = near.astype(jnp.float32)
    side = jnp.where(x > below, jnp.inf, -jnp.inf).astype(dtype)
    other = jnp.nextafter(near, side)  # the neighbour on x's side of the nearest value
    gap = other.astype(jnp.float32) - below
    # the probability of the other neighbour: x's distance from the nearest value in units of the gap
    frac = jnp.where(gap != 0, (x - below) / jnp.where(gap != 0, gap, 1.0), 0.0)
    return jnp.where(jax.random.uniform(key, x.shape) < frac, other, near)


#: Folded into the run key for rounding draws, so they never coincide with a direction's draw.
_ROUNDING_STREAM = 0x524F554E  # "ROUN"


def rounding_key(key, step, path: str, write: int = 0) -> jax.Array:
    """The key that rounds leaf ``path``'s update at ``step``: a function of the run key like
    a direction's (so a replay rounds identically), on a stream of its own; ``write`` tells apart
    two writes of one step (an update, a fold)."""
    return leaf_key(jax.random.fold_in(key, _ROUNDING_STREAM), step, write, path)


def add_rounded(x: jax.Array, update: jax.Array, key) -> jax.Array:
    """``x + update`` in ``x``'s dtype: exact float arithmetic for 32-bit and wider leaves, and
    :func:`stochastic_round` with ``key`` for 16-bit ones (a leaf kept without a master copy)."""
    if master_dtype(x.dtype) == x.dtype:
        return (x + update).astype(x.dtype)
    return stochastic_round(x.astype(jnp.float32) + update.astype(jnp.float32), x.dtype, key)


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
