"""Building a family model from named tensors, below every checkpoint format.

The loaders (safetensors and torch files in :mod:`zojax.models.loading`, GGUF in
:mod:`zojax.models.gguf`) turn a file into ``(hf_name, read)`` pairs; :func:`build_model` maps
them into a model through the family's :func:`hf_param_map` and reports every problem at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax.errors import LoadError

__all__ = ["LoadError", "TensorSource", "build_model", "flatten_tree"]


# Tensors that checkpoints may carry but that are not params.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# --- flat dict helpers ----------------------------------------------------------------------


def flatten_tree(tree: dict, prefix: tuple = ()) -> dict[tuple, Any]:
    """A nested dict as ``{key path tuple: leaf}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_tree(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


# --- building a model from named tensors ------------------------------------------------------

TensorSource = Iterable[tuple[str, Callable[[], np.ndarray]]]


def build_model(
    family: ModuleType,
    config: Any,
    tensors: TensorSource,
    *,
    source: str,
    dtype=None,
    param_dtype=jnp.float32,
    ignore: Callable[[str], bool] | None = None,
):
    """Build ``family.Model(config)`` from ``(hf_name, read)`` pairs; ``read()`` gives a numpy array.

    Every problem (unknown, missing, mis-shaped tensors) is collected and raised as ONE
    :class:`LoadError` mentioning ``source``. Nothing half-loaded is returned.
    """
    dtype = param_dtype if dtype is None else dtype
    abstract = nnx.eval_shape(
        lambda: family.Model(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    )
    graphdef, abs_state = nnx.split(abstract)
    shapes = flatten_tree(nnx.to_pure_dict(abs_state))
    pmap = family.hf_param_map(config)
    np_dtype = np.dtype(jnp.dtype(param_dtype))
    buffers: dict[tuple, np.ndarray] = {}
    filled: set[str] = set()
    bad_shape: set[str] = set()
    unknown, mismatched = [], []

    for name, read in tensors:
        key = name if name in pmap else ("model." + name if "model." + name in pmap else None)
        if key is None:
            if (ignore and ignore(name)) or name.endswith(_IGNORED_SUFFIXES):
                continue
            unknown.append(name)
            continue
        spec = pmap[key]
        full = shapes[spec.path].shape
        want = full[1:] if spec.layer is not None else full
        arr = spec.to_zojax(np.asarray(read()))
        if tuple(arr.shape) != tuple(want):
            hf_want = spec.to_hf(np.broadcast_to(np.zeros((), np.int8), want)).shape
            mismatched.append(f"{name}: checkpoint {tuple(spec.to_hf(arr).shape)}, expected {tuple(hf_want)}")
            bad_shape.add(key)
            continue
        buf = buffers.get(spec.path)
        if buf is None:
            buf = buffers[spec.path] = np.empty(full, np_dtype)
        if spec.layer is None:
            buf[...] = arr
        else:
            buf[spec.layer] = arr
        filled.add(key)
        del arr

    missing = [n for n in pmap if n not in filled and n not in bad_shape]
    if unknown or missing or mismatched:
        parts = [f"cannot load {source}:"]
        for title, names in (
            ("unknown tensors", unknown),
            ("missing tensors", missing),
            ("mis-shaped tensors", mismatched),
        ):
            if names:
                names = sorted(names)
                shown = names[:20] + ([f"... and {len(names) - 20} more"] if len(names) > 20 else [])
                parts.append(f"  {title} ({len(names)}):")
                parts.extend(f"    {n}" for n in shown)
        raise LoadError("\n".join(parts))

    # Hand buffers to JAX one at a time, freeing each numpy copy as we go.
    leaves = {}
    for path in list(buffers):
        leaves[path] = jnp.asarray(buffers.pop(path))
    nnx.replace_by_pure_dict(abs_state, _unflatten(leaves))
    return nnx.merge(graphdef, abs_state)
