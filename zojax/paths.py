"""Leaf paths and the keys of their directions.

Nothing per-direction is ever stored: the direction of a leaf for population member ``k`` at
step ``t`` is a pure function of ``(run key, t, k, the leaf's path)``. The leaf's path enters
through a stable hash, so a leaf's noise does not change when the pytree is reordered or other
leaves are added, and it does not depend on the device mesh (threefry keys are partitionable).
"""

from __future__ import annotations

import functools
import hashlib
import re

import jax

from zojax.types import PyTree

__all__ = ["path_str", "leaf_paths", "map_with_paths", "check_leaf_identity", "is_matrix", "path_hash", "leaf_key", "KEY_DERIVATION"]


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


def map_with_paths(fn, tree: PyTree, *rest: PyTree) -> PyTree:
    """``jax.tree.map`` over the (non-None) leaves of ``tree``, calling ``fn(path, leaf, *rest_leaves)``
    with each leaf's :func:`path_str`.

    >>> map_with_paths(lambda path, x: f"{path}={x}", {"a": [1, None]})
    {'a': ['a/0=1', None]}
    """
    return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_str(p), x, *r), tree, *rest)


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


def is_matrix(path: str, shape, stacked: str | None = None) -> bool:
    """Whether a leaf is (a stack of) matrices, i.e. gets low-rank directions.

    ``stacked`` is the regex of paths whose leaves carry a leading layer axis (see
    :class:`zojax.directions.Gaussian`); without it no leaf is a stack.

    >>> is_matrix("layers/norm/scale", (30, 576), r"^layers/"), is_matrix("layers/norm/scale", (30, 576))
    (False, True)
    """
    stack_axes = 1 if stacked is not None and re.search(stacked, path) else 0
    return len(shape) - stack_axes >= 2


# Bump when the derivation of directions from (key, step, member, path) changes: seed logs
# record it, and replay refuses a log written under another one. v2: low-rank factors come from
# zojax.random (row-addressable, so the adapter path draws one layer's factors inside a layer scan)
# instead of jax.random.normal; dense values are v1's.
KEY_DERIVATION = "fold_in(step, member, blake2b64(path)); dense values and low-rank factors from zojax.random v2"


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
