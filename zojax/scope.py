"""Scopes: which leaves of a parameter pytree are trainable, and the split into trainable and frozen."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax.directions import Noise
from zojax.layout import HF_PROJECTIONS
from zojax.paths import check_leaf_identity, leaf_paths, path_str
from zojax.types import PyTree

__all__ = ["SCOPE_PRESETS", "trainable_mask", "partition", "combine"]


SCOPE_PRESETS: dict[str, str] = {
    # attention and MLP projection kernels only (the seed paper's "lora-only" scope), by Hugging
    # Face's names; the trainer uses the model family's own declaration (zojax.layout)
    "lora": HF_PROJECTIONS.lora_scope,
    # every weight matrix except embeddings: no biases, norms or embeddings
    "weights": r"^(?!.*(bias|norm|embed)).*$",
    # only norms and biases
    "norms_biases": r"(bias|norm)",
}


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
    if noise is not None and not noise.trains(path, jnp.shape(leaf)):
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
