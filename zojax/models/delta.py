"""Only what a run trained: the trained leaves as one safetensors file, tied to the base weights by a hash.

A run that trains 576 norm parameters of a 135M model need not write 538 MB: :func:`save_delta` writes the
trained leaves (named by their parameter paths, ``norm/scale``) with the base model's name and the SHA-256
of its weights (:func:`weights_hash`) in the file's metadata, and :func:`apply_delta` writes them into a
model loaded from that base, after checking the hash: a delta applied to other weights is refused.
``zojax export --delta`` writes one; ``zojax eval --delta`` and ``zojax generate --delta`` apply it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from zojax import nn as znn
from zojax.errors import DeltaError
from zojax.models.builder import flatten_tree

__all__ = ["DELTA_FILE", "DeltaError", "apply_delta", "load_delta", "param_names", "save_delta", "weights_hash"]

#: The file a delta directory holds.
DELTA_FILE = "delta.safetensors"
_FORMAT = "zojax-delta/1"


def param_names(model: nnx.Module) -> dict[str, tuple]:
    """``{"layers/attn/q/kernel": key path}`` of the model's ``nnx.Param`` leaves, the names a delta uses."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): path for path in flatten_tree(pure)}


def _host_leaves(model: nnx.Module) -> dict[str, np.ndarray]:
    flat = flatten_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    return {"/".join(map(str, p)): leaf for p, leaf in flat.items()}


def weights_hash(model: nnx.Module) -> str:
    """SHA-256 (hex) of the model's parameters: names, dtypes, shapes and bytes, read one leaf at a time."""
    digest = hashlib.sha256()
    for name, leaf in sorted(_host_leaves(model).items()):
        a = np.ascontiguousarray(jax.device_get(znn.materialize(leaf)))
        digest.update(json.dumps([name, str(a.dtype), list(a.shape)]).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def save_delta(
    directory: str | os.PathLike,
    trained: Mapping[str, Any],
    *,
    base_model: str,
    base_hash: str,
    overwrite: bool = False,
) -> Path:
    """Write ``{parameter name: trained array}`` as ``directory/delta.safetensors``; returns the file.

    ``base_model`` (its name or path) and ``base_hash`` (:func:`weights_hash` of the base model) go into the
    file's metadata, which :func:`apply_delta` checks.
    """
    from zojax.models.loading import _write_safetensors, current_umask

    if not trained:
        raise DeltaError("save_delta: no trained leaves to write")
    target = Path(directory).expanduser().resolve()
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it")
    target.mkdir(parents=True, exist_ok=True)
    host = {name: np.asarray(jax.device_get(znn.materialize(a))) for name, a in trained.items()}
    metadata = {"format": _FORMAT, "base_model": base_model, "base_sha256": base_hash}
    fd, tmp = tempfile.mkstemp(prefix=f".{DELTA_FILE}.tmp-", dir=target)
    os.close(fd)
    try:
        _write_safetensors(Path(tmp), sorted(host), host.__getitem__, metadata=metadata)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 -> as any file the user writes
        os.replace(tmp, target / DELTA_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target / DELTA_FILE


def load_delta(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a delta file, or of the ``delta.safetensors`` in a directory."""
    from zojax.models.loading import LoadError, _read_safetensors

    file = Path(path).expanduser()
    file = file / DELTA_FILE if file.is_dir() else file
    if not file.is_file():
        raise DeltaError(f"no delta at {path} (expected a {DELTA_FILE} file or a directory holding one)")
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: one line naming it
        raise DeltaError(f"{file} is not a safetensors file: {e}") from None
    if metadata.get("format") != _FORMAT:
        raise DeltaError(f"{file} is not a zojax delta (metadata format {metadata.get('format')!r}, want {_FORMAT!r})")
    try:
        tensors = {name: read() for name, read in _read_safetensors([file])}
    except LoadError as e:
        raise DeltaError(str(e)) from None
    return tensors, metadata


def apply_delta(model: nnx.Module, path: str | os.PathLike) -> nnx.Module:
    """Write a delta's trained leaves into ``model`` (loaded from the delta's base model); returns it.

    Refused with :class:`DeltaError` when the model's weights are not the ones the delta was trained from
    (their :func:`weights_hash` differs: another model, revision or ``param_dtype``), or when a leaf is
    unknown or has another shape.
    """
    tensors, metadata = load_delta(path)
    actual = weights_hash(model)
    if actual != metadata.get("base_sha256"):
        raise DeltaError(
            f"delta {path} was trained from {metadata.get('base_model')!r} with weights sha256 "
            f"{str(metadata.get('base_sha256'))[:12]}..., but this model's weights hash to {actual[:12]}... "
            "(another model, revision or model.param_dtype): load the delta's base model"
        )
    names = param_names(model)
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    leaves = flatten_tree(pure)
    for name, value in tensors.items():
        if name not in names:
            raise DeltaError(f"delta {path}: the model has no parameter {name!r}")
        old = leaves[names[name]]
        if tuple(old.shape) != value.shape:
            raise DeltaError(f"delta {path}: {name} has shape {value.shape}, the model's {tuple(old.shape)}")
        node = pure
        for key in names[name][:-1]:
            node = node[key]
        node[names[name][-1]] = jax.numpy.asarray(value, dtype=old.dtype)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model
