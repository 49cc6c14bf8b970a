"""Load llama.cpp GGUF files (Llama-family architectures) into zojax models.

Tensors are dequantised one at a time with ``gguf.quants.dequantize`` (so a Q4 file becomes
float weights: fine-tuning then starts from the dequantised model), renamed to HF names, and
fed to the family-agnostic builder in :mod:`zojax.models.builder`. llama.cpp's convert script
permutes the rows of Q and K for the ``llama`` architecture (interleaved RoPE); that permutation
is undone here exactly as transformers' own GGUF loader does. The config comes from the GGUF
metadata; the tokenizer from ``AutoTokenizer.from_pretrained(dir, gguf_file=name)``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from zojax.models.builder import LoadError, build_model

__all__ = ["hf_config_from_gguf", "iter_gguf_tensors", "load_gguf"]

# general.architecture -> HF model_type for the architectures zojax.models.llama covers.
_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}

_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def hf_name(gguf_name: str) -> str | None:
    """HF tensor name of a GGUF tensor name (None if it is not a param, e.g. ``rope_freqs``).

    >>> hf_name("blk.3.attn_output.weight")
    'model.layers.3.self_attn.o_proj.weight'
    """
    m = _BLOCK_RE.match(gguf_name)
    if m:
        part = _BLOCK.get(m.group(2))
        return None if part is None else f"model.layers.{m.group(1)}.{part}.{m.group(3)}"
    stem, _, suffix = gguf_name.rpartition(".")
    top = _TOP.get(stem)
    return None if top is None else f"{top}.{suffix}"


def hf_config_from_gguf(reader, path: str | os.PathLike = "") -> Any:
    """A transformers config built from a GGUF file's metadata (``reader``: ``gguf.GGUFReader``)."""
    from transformers import AutoConfig

    arch = _field(reader, "general.architecture")
    name = str(_field(reader, "general.name", "") or "")
    model_type = _MODEL_TYPES.get(arch)
    if model_type is None:
        raise LoadError(
            f"GGUF architecture {arch!r} in {path} is not supported; supported: {sorted(_MODEL_TYPES)}"
        )
    if arch == "llama" and "mistral" in name.lower():  # llama.cpp files Mistral under "llama"
        model_type = "mistral"

    def a(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    hidden = int(a("embedding_length"))
    heads = int(a("attention.head_count"))
    kv = a("attention.head_count_kv", heads)
    head_dim = a("attention.key_length") or a("rope.dimension_count") or hidden // heads
    vocab = a("vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else None
    names = {t.name for t in reader.tensors}
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(a("rope.freq_base", 10000.0))}
    scaling = a("rope.scaling.type")
    if scaling and scaling != "none":
        rope["rope_type"] = scaling
        rope["factor"] = float(a("rope.scaling.factor", 1.0))
        if a("rope.scaling.original_context_length") is not None:
            rope["original_max_position_embeddings"] = int(a("rope.scaling.original_context_length"))
    kw: dict[str, Any] = {
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(a("feed_forward_length")),
        "num_hidden_layers": int(a("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv),
        "head_dim": int(head_dim),
        "max_position_embeddings": int(a("context_length", 2048)),
        "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_parameters": rope,
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
    }
    if model_type == "llama":
        kw["attention_bias"] = "blk.0.attn_q.bias" in names
    if model_type == "mistral" and a("attention.sliding_window") is not None:
        kw["sliding_window"] = int(a("attention.sliding_window"))
    elif model_type == "mistral":
        kw["sliding_window"] = None
    return AutoConfig.for_model(model_type, **kw)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # Inverse of llama.cpp convert_hf_to_gguf.py's LlamaModel.permute (rows of Q / K).
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def iter_gguf_tensors(reader, hf_config) -> Iterator[tuple[str, Any]]:
    """Yield ``(hf_name, read)`` for every param tensor; ``read()`` dequantises it (float32)."""
    from gguf.quants import dequantize

    arch = _field(reader, "general.architecture")
    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":
                # transformers ignores these llama3 frequency factors too (parity with it).
                warnings.warn("GGUF rope_freqs (llama3 RoPE factors) ignored", stacklevel=2)
                continue
            yield t.name, (lambda: np.zeros(()))  # reported as unknown by the builder
            continue

        def read(t=t):
            w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
            if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_q.bias")):
                w = _unpermute(w, hf_config.num_attention_heads)
            elif arch == "llama" and t.name.endswith(("attn_k.weight", "attn_k.bias")):
                w = _unpermute(w, hf_config.num_key_value_heads)
            return w

        yield name, read


def load_gguf(path: str | os.PathLike, *, dtype=None, param_dtype=None, tokenizer: bool = True):
    """Load ``(model, config, tokenizer)`` from a GGUF file (Llama-family architectures).

    ``tokenizer=False`` skips the (slow) tokenizer conversion and returns None for it.
    """
    import jax.numpy as jnp
    from gguf import GGUFReader

    from zojax.models import llama

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # the reader maps every tensor: a short or garbled file fails here
        raise LoadError(f"cannot read GGUF file {path}: truncated or not a GGUF file ({e})") from e
    hf_config = hf_config_from_gguf(reader, path)
    config = llama.Config.from_hf(hf_config)
    model = build_model(
        llama,
        config,
        iter_gguf_tensors(reader, hf_config),
        source=str(path),
        dtype=dtype,
        param_dtype=jnp.float32 if param_dtype is None else param_dtype,
    )
    tok = gguf_tokenizer(reader) if tokenizer else None
    return model, config, tok


def gguf_tokenizer(reader):
    """The tokenizer stored in a GGUF file, as a ``PreTrainedTokenizerFast``.

    Builds the same tokenizer as ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` from the
    metadata read with the ``gguf`` package, because transformers' own GGUF metadata reader
    imports torch, which zojax does not need.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        _SPECIAL_TOKENS,
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    metadata = {k: _field(reader, k) for k in reader.fields if k.startswith(("tokenizer.", "general.architecture"))}
    grouped = {
        group: {name: metadata[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in metadata}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
    for name, key in _SPECIAL_TOKENS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
