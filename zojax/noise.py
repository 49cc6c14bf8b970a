"""Directions regenerated from keys, and scopes that choose the trainable leaves.

Nothing per-direction is ever stored: the direction of a leaf for population member
``k`` at step ``t`` is a pure function of ``(run key, t, k, the leaf's path)``. The
leaf's path enters through a stable hash, so a leaf's noise does not change when the
pytree is reordered or other leaves are added, and it does not depend on the device
mesh (threefry keys are partitionable).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax import _rng
from zojax.layout import HF_PROJECTIONS
from zojax.types import PyTree

__all__ = [
    "Gaussian",
    "Rademacher",
    "LowRank",
    "Factorized",
    "Noise",
    "LowRankDirection",
    "SCOPE_PRESETS",
    "path_str",
    "leaf_paths",
    "trainable_mask",
    "partition",
    "combine",
    "leaf_key",
    "leaf_direction",
    "directions",
    "dense_direction",
    "is_matrix",
    "check_leaf_identity",
    "path_hash",
    "KEY_DERIVATION",
]



class _Layout:
    """Which leaves are stacks of per-layer arrays, as the model declares it.

    ``stacked`` is a regex searched in each leaf's path (see :func:`path_str`); a leaf it
    matches carries one leading layer axis, so a ``(L, d)`` norm scale is a stack of
    vectors and a ``(L, d_in, d_out)`` kernel a stack of matrices. ``None`` (the default
    for a pytree zojax knows nothing about) means no leaf is stacked. zojax's own models
    declare theirs (``zojax.models.stacked_paths(model)``); a plain NNX model with a
    ``nnx.List`` of layers has no stacked leaves.
    """

    stacked: str | None  # a field of each subclass

    def is_matrix(self, path: str, shape) -> bool:
        """Whether a leaf is (a stack of) matrices, i.e. gets low-rank directions and decay."""
        return is_matrix(path, shape, self.stacked)


# No normal zojax draws exceeds 6.3 sigma (zojax._rng float32; 4.3 for 16-bit dtypes) nor
# jax.random.normal's 5.4 (float32) or 8.3 (float64): a safe bound, loose on purpose.
_NORMAL_MAX = 16.0


@dataclasses.dataclass(frozen=True)
class Gaussian(_Layout):
    """Dense N(0, I) directions (MeZO)."""

    stacked: str | None = None

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction (for cheap overflow checks)."""
        return _NORMAL_MAX


@dataclasses.dataclass(frozen=True)
class Rademacher(_Layout):
    """Dense ±1 directions."""

    stacked: str | None = None

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction: 1."""
        return 1.0


@dataclasses.dataclass(frozen=True)
class LowRank(_Layout):
    """LoZO directions ``Z = V U^T`` for every matrix leaf.

    For a weight stored ``(..., d_in, d_out)``, ``V`` (``d_in x rank``) is resampled only
    every ``refresh_every`` steps (the lazy factor) and ``U`` (``d_out x rank``) is fresh
    every step -- LoZO's ``U V^T`` for torch's ``(d_out, d_in)`` layout. Leading axes
    (stacked layers, declared by ``stacked``) get independent factors. 1-D leaves get dense
    Gaussian directions (``vectors="dense"``, as the official LoZO) or are frozen
    (``vectors="exclude"``); a stacked per-layer vector (shape (L, d) on a path ``stacked``
    matches) counts as 1-D.

    The lazy factor sits on the stored first axis (``d_in``). For an embedding table stored
    ``(vocab, d)`` that is the vocabulary side -- the input side of the lookup, as for every
    linear layer -- where the official LoZO, going by torch's ``(out, in)`` layout, puts
    it on ``d``. Each entry of ``V U^T`` has the same variance either way and both factors
    are drawn row by row for the looked-up tokens, so cost and variance do not pick a
    side; zojax keeps one rule for every matrix.

    >>> LowRank(rank=2, refresh_every=100).rank
    2
    """

    rank: int = 2
    refresh_every: int = 100
    vectors: str = "dense"
    stacked: str | None = None

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LowRank: rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise ValueError(
                f"LowRank: refresh_every must be an integer >= 1, got {self.refresh_every!r}"
            )
        if self.vectors not in ("dense", "exclude"):
            raise ValueError(f"LowRank: vectors must be 'dense' or 'exclude', got {self.vectors!r}")

    @property
    def scale(self) -> float:
        return 1.0

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction: ``rank`` products of two normals, scaled
        (and the dense normals of 1-D leaves)."""
        return max(self.rank * _NORMAL_MAX**2 * self.scale, _NORMAL_MAX)


@dataclasses.dataclass(frozen=True)
class Factorized(LowRank):
    """MeZO-style factorized high-rank directions ``Z = V U^T / sqrt(rank)``.

    Both factors are fresh every step (``refresh_every=1``); each entry of ``Z`` has unit
    variance like MeZO's Gaussian, yet ``Z`` is scored through the low-rank path.
    """

    rank: int = 128
    refresh_every: int = 1

    @property
    def scale(self) -> float:
        return float(self.rank) ** -0.5


Noise = Gaussian | Rademacher | LowRank


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LowRankDirection:
    """A direction ``v @ u.T`` kept as factors (``u`` already carries any scale)."""

    v: jax.Array
    u: jax.Array

    def dense(self) -> jax.Array:
        return jnp.einsum("...ir,...or->...io", self.v, self.u)


# --- paths and scopes -------------------------------------------------------------------

def is_matrix(path: str, shape, stacked: str | None = None) -> bool:
    """Whether a leaf is (a stack of) matrices, i.e. gets low-rank directions.

    ``stacked`` is the regex of paths whose leaves carry a leading layer axis (see
    :class:`Gaussian`); without it no leaf is a stack.

    >>> is_matrix("layers/norm/scale", (30, 576), r"^layers/"), is_matrix("layers/norm/scale", (30, 576))
    (False, True)
    """
    stack_axes = 1 if stacked is not None and re.search(stacked, path) else 0
    return len(shape) - stack_axes >= 2


SCOPE_PRESETS: dict[str, str] = {
    # attention and MLP projection kernels only (the seed paper's "lora-only" scope), by Hugging
    # Face's names; the trainer uses the model family's own declaration (zojax.layout)
    "lora": HF_PROJECTIONS.lora_scope,
    # every weight matrix except embeddings: no biases, norms or embeddings
    "weights": r"^(?!.*(bias|norm|embed)).*$",
    # only norms and biases
    "norms_biases": r"(bias|norm)",
}


def path_str(keypath) -> str:
    """A stable ``a/b/0/c`` name for a pytree key path (NNX ``.value`` attributes dropped).

    >>> path_str(jax.tree_util.tree_flatten_with_path({"a": [1, {"b": 2}]})[0][1][0])
    'a/1/b'
    """
    parts = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            if k.name != "value":
                parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_paths(tree: PyTree) -> list[str]:
    """Path names of the (non-None) leaves of ``tree`` in flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def check_leaf_identity(tree: PyTree) -> None:
    """Refuse a pytree in which two leaves would share a name, and so a direction.

    A leaf's noise is keyed by its path string, which is lossy (``{"a/b": x}`` and
    ``{"a": {"b": y}}`` both read ``a/b``), so two distinct leaves could be given the same
    key. The 64-bit path hashes are checked too, so no two leaves of one pytree share a key.

    >>> check_leaf_identity({"a/b": 1.0, "a": {"b": 2.0}})
    Traceback (most recent call last):
    ...
    ValueError: two parameter leaves have the same path name 'a/b', so they would get the same random directions; rename one (paths are joined with '/')
    """
    seen: dict[tuple[int, int], str] = {}
    for path in leaf_paths(tree):
        words = path_hash(path)
        if words in seen:
            if seen[words] == path:
                raise ValueError(
                    f"two parameter leaves have the same path name {path!r}, so they would get the "
                    "same random directions; rename one (paths are joined with '/')"
                )
            raise ValueError(f"the paths {seen[words]!r} and {path!r} hash alike; rename one")  # pragma: no cover
        seen[words] = path


def _scope_predicate(scope) -> Callable[[str, Any], bool]:
    if scope is None or scope == "all":
        return lambda path, leaf: True
    if callable(scope):
        return scope
    if isinstance(scope, str):
        pattern = re.compile(SCOPE_PRESETS.get(scope, scope))
        return lambda path, leaf: pattern.search(path) is not None
    raise TypeError(
        f"scope must be None, 'all', a preset {sorted(SCOPE_PRESETS)}, a regex string or a "
        f"callable (path, leaf) -> bool; got {scope!r}"
    )


def _is_trainable(path: str, leaf, predicate, noise) -> bool:
    if leaf is None or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
        return False
    if isinstance(noise, LowRank) and noise.vectors == "exclude" and not noise.is_matrix(path, jnp.shape(leaf)):
        return False
    return bool(predicate(path, leaf))


def trainable_mask(params: PyTree, scope=None, noise: Noise | None = None) -> PyTree:
    """A pytree of bools: which floating leaves the scope selects for training.

    ``scope`` is ``None``/"all", a preset name (``lora``, ``weights``, ``norms_biases``),
    a regex searched in each leaf's path, or a callable ``(path, leaf) -> bool``.

    >>> trainable_mask({"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}, "weights")
    {'bias': False, 'w': True}
    """
    check_leaf_identity(params)
    predicate = _scope_predicate(scope)
    mask = jax.tree_util.tree_map_with_path(
        lambda p, x: _is_trainable(path_str(p), x, predicate, noise), params
    )
    if not any(jax.tree_util.tree_leaves(mask)):
        paths = leaf_paths(params)
        raise ValueError(
            f"scope {scope!r} selects no trainable leaves; the parameter paths are "
            f"{paths[:12]}{' ...' if len(paths) > 12 else ''}"
        )
    return mask


def partition(params: PyTree, scope=None, noise: Noise | None = None) -> tuple[PyTree, PyTree]:
    """Split ``params`` into ``(trainable, frozen)``; each has ``None`` where the other has a leaf.

    >>> t, f = partition({"w": jnp.ones(2), "b": jnp.zeros(2)}, "w")
    >>> t["b"] is None and f["w"] is None
    True
    """
    mask = trainable_mask(params, scope, noise)
    trainable = jax.tree.map(lambda x, m: x if m else None, params, mask)
    frozen = jax.tree.map(lambda x, m: None if m else x, params, mask)
    return trainable, frozen


def combine(trainable: PyTree, frozen: PyTree) -> PyTree:
    """Inverse of :func:`partition`.

    >>> combine({"a": 1.0, "b": None}, {"a": None, "b": 2.0})
    {'a': 1.0, 'b': 2.0}
    """
    # frozen leads: its None marks where trainable holds a leaf or a whole subtree
    # (e.g. a zojax.nn.Perturbed on the adapter path)
    return jax.tree.map(
        lambda f, t: t if f is None else f, frozen, trainable, is_leaf=lambda x: x is None
    )


# --- keys and directions ----------------------------------------------------------------


# Bump when the derivation of directions from (key, step, member, path) changes: seed logs
# record it, and replay refuses a log written under another one.
KEY_DERIVATION = "fold_in(step, member, blake2b64(path)); dense values from zojax._rng v1"


@functools.cache
def path_hash(path: str) -> tuple[int, int]:
    """A stable 64-bit hash of a leaf path as two 32-bit words (stable across processes,
    unlike ``hash()``; 64 bits so that realistic pytrees never see a collision, which
    :func:`check_leaf_identity` verifies anyway)."""
    digest = hashlib.blake2b(path.encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")


def leaf_key(key: jax.Array, step, member, path: str) -> jax.Array:
    """The key of one leaf's direction: fold_in(run key, step, member, hash(path))."""
    key = jax.random.fold_in(key, step)
    key = jax.random.fold_in(key, member)
    high, low = path_hash(path)
    return jax.random.fold_in(jax.random.fold_in(key, high), low)


def dense_direction(noise: Noise, key, shape, dtype) -> jax.Array:
    """A dense direction: N(0, 1) or ±1 values from :mod:`zojax._rng`, which makes several
    values per threefry hash (jax.random spends a whole hash on each), element ``i`` of the
    flattened array a pure function of ``(key, i)``."""
    if isinstance(noise, Rademacher):
        return _rng.rademacher(key, shape, dtype)
    return _rng.normal(key, shape, dtype)


def leaf_direction(noise: Noise, key, step, member, path: str, shape, dtype):
    """The direction of one leaf: a dense array, or a :class:`LowRankDirection`."""
    if isinstance(noise, LowRank) and noise.is_matrix(path, shape):
        lead, d_in, d_out = tuple(shape[:-2]), shape[-2], shape[-1]
        step = jnp.asarray(step)
        v_step = (step // noise.refresh_every) * noise.refresh_every
        v = jax.random.normal(
            jax.random.fold_in(leaf_key(key, v_step, member, path), 1), lead + (d_in, noise.rank), dtype
        )
        u = jax.random.normal(
            jax.random.fold_in(leaf_key(key, step, member, path), 0), lead + (d_out, noise.rank), dtype
        )
        if noise.scale != 1.0:
            u = u * jnp.asarray(noise.scale, dtype)
        return LowRankDirection(v, u)
    # 1-D leaves under LowRank are dense Gaussian, as in the official LoZO.
    return dense_direction(noise, leaf_key(key, step, member, path), tuple(shape), dtype)


def directions(trainable: PyTree, noise: Noise, key, step, member) -> PyTree:
    """Directions for every non-None leaf of ``trainable`` (same structure, None kept).

    >>> d = directions({"w": jnp.ones((3, 2))}, LowRank(rank=1), jax.random.PRNGKey(0), 0, 0)
    >>> d["w"].v.shape, d["w"].u.shape
    ((3, 1), (2, 1))
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, x: leaf_direction(noise, key, step, member, path_str(p), x.shape, x.dtype),
        trainable,
    )
