"""Llama-family decoders (Llama 2/3, Qwen2/2.5, Qwen3, Mistral, SmolLM/SmolLM2) as a Flax NNX module.

The decoder skeleton, the pure-forward contract the engine relies on (any leaf may be a
:class:`zojax.nn.Perturbed`, a population vmaps with unbatched bases) and the KV cache are
:mod:`zojax.models.decoder`'s; this module holds what the Llama family does differently: RoPE
(with its scaling variants), RMSNorm before each block, a gated MLP, grouped-query attention,
Qwen3's q/k norms, sliding windows, and an optional untied LM head.

Param paths (``nnx.split(model)[1]``)::

    embed_tokens/embedding                      (vocab, hidden)
    layers/self_attn/{q,k,v,o}_proj/kernel      (L, d_in, d_out)
    layers/self_attn/{q,k,v}_proj/bias          (L, d_out)        Qwen2, or attention_bias
    layers/self_attn/o_proj/bias                (L, hidden)       attention_bias (not Qwen2)
    layers/self_attn/{q,k}_norm/scale           (L, head_dim)     Qwen3
    layers/mlp/{gate,up,down}_proj/kernel       (L, d_in, d_out)  (+ bias with mlp_bias)
    layers/{input,post_attention}_layernorm/scale   (L, hidden)
    norm/scale                                  (hidden,)
    lm_head/kernel                              (hidden, vocab)   untied models only
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax import nn as znn
from zojax.layout import Projections
from zojax.models import decoder, layers
from zojax.models.family import ParamSpec, copied, layer_specs, transposed

__all__ = ["ARCHITECTURES", "MODEL_TYPES", "Config", "Model", "ParamSpec", "apply", "hf_param_map"]
__all__ += ["rope_frequencies"]

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ARCH_OF = dict(zip(MODEL_TYPES, ARCHITECTURES))

_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


# --- config -----------------------------------------------------------------------------


def _freeze(d: dict | None) -> tuple[tuple[str, Any], ...]:
    # Config must be hashable: it is static metadata of the NNX graphdef (jit cache key).
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (d or {}).items()))


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of a Llama-family decoder.

    ``rope_scaling`` holds HF's ``rope_parameters`` minus ``rope_theta`` as sorted ``(key, value)``
    pairs (hashable); ``()`` means plain RoPE.

    >>> c = Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...            num_attention_heads=4, num_key_value_heads=2)
    >>> c.head_dim, c.model_type
    (8, 'llama')
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (MHA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2: always; Llama/Qwen3: attention_bias
    o_bias: bool = False  # attention_bias (never for Qwen2)
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # "full_attention" / "sliding_attention" per layer
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", _freeze(self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        layers.activation(self.hidden_act)  # raises for an unknown name
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"unsupported model_type {self.model_type!r}; known: {MODEL_TYPES}")
        rope = self.rope_params
        if rope.get("rope_type", "default") not in _ROPE_TYPES:
            raise NotImplementedError(
                f"rope_type {rope['rope_type']!r} is not supported; known: {_ROPE_TYPES}"
            )
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise NotImplementedError("partial_rotary_factor != 1 is not supported by the Llama family")

    @property
    def rope_params(self) -> dict[str, Any]:
        """RoPE scaling parameters as a dict (without ``rope_theta``)."""
        return dict(self.rope_scaling)

    @property
    def windows(self) -> tuple[int | None, ...]:
        """Per-layer sliding-window size (None: full causal attention)."""
        L = self.num_hidden_layers
        if self.sliding_window is None:
            return (None,) * L
        if self.layer_types is None:  # Mistral: one window for every layer
            return (self.sliding_window,) * L
        return tuple(self.sliding_window if t == "sliding_attention" else None for t in self.layer_types)

    @classmethod
    def from_hf(cls, hf_config: Any) -> Config:
        """Build from a transformers ``LlamaConfig``/``Qwen2Config``/``Qwen3Config``/``MistralConfig``."""
        g = functools.partial(getattr, hf_config)
        model_type = g("model_type", "llama")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"unsupported model_type {model_type!r}; known: {MODEL_TYPES}")
        rope = dict(g("rope_parameters", None) or g("rope_scaling", None) or {})
        theta = rope.pop("rope_theta", None) or g("rope_theta", None) or 10000.0
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        if rope.get("rope_type", "default") == "default":
            rope = {k: v for k, v in rope.items() if k not in ("rope_type", "type")}
        attention_bias = bool(g("attention_bias", False))
        qwen2 = model_type == "qwen2"
        sliding = g("sliding_window", None)
        if model_type in ("qwen2", "qwen3") and not g("use_sliding_window", False):
            sliding = None
        layer_types = g("layer_types", None)
        eos = g("eos_token_id", None)
        return cls(
            vocab_size=g("vocab_size"),
            hidden_size=g("hidden_size"),
            intermediate_size=g("intermediate_size"),
            num_hidden_layers=g("num_hidden_layers"),
            num_attention_heads=g("num_attention_heads"),
            num_key_value_heads=g("num_key_value_heads", None),
            head_dim=g("head_dim", None),
            hidden_act=g("hidden_act", "silu"),
            max_position_embeddings=g("max_position_embeddings", 2048),
            rms_norm_eps=float(g("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            rope_scaling=_freeze(rope),
            tie_word_embeddings=bool(g("tie_word_embeddings", False)),
            qkv_bias=True if qwen2 else attention_bias,
            o_bias=False if qwen2 else attention_bias,
            mlp_bias=bool(g("mlp_bias", False)) if model_type == "llama" else False,
            qk_norm=model_type == "qwen3",
            sliding_window=sliding,
            layer_types=tuple(layer_types) if (layer_types and sliding is not None) else None,
            model_type=model_type,
            bos_token_id=g("bos_token_id", None),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=g("pad_token_id", None),
        )

    def to_hf(self):
        """The equivalent transformers config (for export and parity tests)."""
        from transformers import AutoConfig

        rope = {"rope_theta": self.rope_theta, "rope_type": "default", **self.rope_params}
        kw: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id)
            if isinstance(self.eos_token_id, tuple)
            else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "architectures": [_ARCH_OF[self.model_type]],
        }
        t = self.model_type
        if t in ("llama", "qwen3"):
            if self.qkv_bias != self.o_bias:
                raise ValueError(f"{t} has one attention_bias flag; qkv_bias != o_bias cannot be exported")
            kw["attention_bias"] = self.qkv_bias
        elif t == "qwen2" and (not self.qkv_bias or self.o_bias):
            raise ValueError("Qwen2 always has q/k/v biases and no o_proj bias")
        elif t == "mistral" and (self.qkv_bias or self.o_bias):
            raise ValueError("Mistral has no attention biases")
        if t == "llama":
            kw["mlp_bias"] = self.mlp_bias
        if t in ("qwen2", "qwen3"):
            kw["use_sliding_window"] = self.sliding_window is not None
            if self.sliding_window is not None:
                kw["sliding_window"] = self.sliding_window
                if self.layer_types is not None:
                    kw["layer_types"] = list(self.layer_types)
        if t == "mistral":
            kw["sliding_window"] = self.sliding_window
        return AutoConfig.for_model(t, **kw)


# --- RoPE -----------------------------------------------------------------------------------


def rope_frequencies(config: Config) -> tuple[np.ndarray, float]:
    """``(inv_freq (head_dim // 2,), attention_scaling)`` as transformers computes them.

    ``"dynamic"`` NTK scaling equals plain RoPE up to ``max_position_embeddings``, which is
    what is computed here (longer inputs would need per-length frequencies).

    >>> f, s = rope_frequencies(Config(hidden_size=8, num_attention_heads=1))
    >>> f.shape, s
    ((4,), 1.0)
    """
    dim = config.head_dim
    assert dim is not None  # set by Config.__post_init__
    base = config.rope_theta
    p = config.rope_params
    kind = p.get("rope_type", "default")
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    scaling: Any = 1.0  # or the config's attention_factor; a float on return
    if kind == "linear":
        inv = inv / p["factor"]
    elif kind == "llama3":
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p.get("original_max_position_embeddings", config.max_position_embeddings)
        low_wl, high_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        out = np.where(wl > low_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wl < high_wl) & ~(wl > low_wl)
        inv = np.where(medium, smoothed, out)
    elif kind == "yarn":
        factor = p.get("factor")
        old = p.get("original_max_position_embeddings", config.max_position_embeddings)
        if factor is None:
            factor = config.max_position_embeddings / old

        def mscale(s, m=1.0):
            return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

        scaling = p.get("attention_factor")
        if scaling is None:
            m, m_all = p.get("mscale"), p.get("mscale_all_dim")
            scaling = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)
        fast, slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

        def corr(rot):
            return dim * math.log(old / (rot * 2 * math.pi)) / (2 * math.log(base))

        low, high = corr(fast), corr(slow)
        if p.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
        extrap = 1 - ramp
        pos = base ** (np.arange(0, dim, 2).astype(np.float32) / dim)
        inv = (1.0 / (factor * pos)) * (1 - extrap) + (1.0 / pos) * extrap
    return inv.astype(np.float32), float(scaling)


def _rope(x, cos, sin):
    # x: (B, S, H, D); cos/sin: (B, S, D). HF's rotate_half convention (not interleaved).
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rot * sin[:, :, None, :]


def _rope_tables(c: Config, positions, dtype):
    """``(cos, sin)`` of shape ``(B, S, head_dim)`` at ``positions``, attention scaling folded in."""
    inv_freq, rope_scale = rope_frequencies(c)
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return (jnp.cos(angles) * rope_scale).astype(dtype), (jnp.sin(angles) * rope_scale).astype(dtype)


# --- parameter containers ------------------------------------------------------------------


class _Attention(nnx.Module):
    def __init__(self, c: Config, *, param_dtype, rngs):
        L, d, hd = c.num_hidden_layers, c.hidden_size, c.head_dim
        assert hd is not None and c.num_key_value_heads is not None  # set by Config.__post_init__
        kw = {"stack": L, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = layers.Linear(d, c.num_attention_heads * hd, bias=c.qkv_bias, **kw)
        self.k_proj = layers.Linear(d, c.num_key_value_heads * hd, bias=c.qkv_bias, **kw)
        self.v_proj = layers.Linear(d, c.num_key_value_heads * hd, bias=c.qkv_bias, **kw)
        self.o_proj = layers.Linear(c.num_attention_heads * hd, d, bias=c.o_bias, **kw)
        norm = functools.partial(layers.RMSNorm, hd, stack=L, param_dtype=param_dtype)
        self.q_norm = norm() if c.qk_norm else None  # Qwen3
        self.k_norm = norm() if c.qk_norm else None


class _MLP(nnx.Module):
    def __init__(self, c: Config, *, param_dtype, rngs):
        kw = {"bias": c.mlp_bias, "stack": c.num_hidden_layers, "param_dtype": param_dtype, "rngs": rngs}
        self.gate_proj = layers.Linear(c.hidden_size, c.intermediate_size, **kw)
        self.up_proj = layers.Linear(c.hidden_size, c.intermediate_size, **kw)
        self.down_proj = layers.Linear(c.intermediate_size, c.hidden_size, **kw)


class _Layers(nnx.Module):
    """All decoder layers, stacked along a leading ``num_layers`` axis."""

    def __init__(self, c: Config, *, param_dtype, rngs):
        L = c.num_hidden_layers
        self.self_attn = _Attention(c, param_dtype=param_dtype, rngs=rngs)
        self.mlp = _MLP(c, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = layers.RMSNorm(c.hidden_size, stack=L, param_dtype=param_dtype)
        self.post_attention_layernorm = layers.RMSNorm(c.hidden_size, stack=L, param_dtype=param_dtype)


# --- pure math ----------------------------------------------------------------------------


def _positions_from_mask(mask):
    # HF generate's convention: cumsum(mask) - 1, pads clamped to 0 (their outputs are unused).
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def _embed(c: Config, params, input_ids, positions, dtype):
    """Token embedding; the RoPE tables are the context every layer reads."""
    h = znn.embed(input_ids, params["embed_tokens"]["embedding"]).astype(dtype)
    return h, _rope_tables(c, positions, dtype)


def _decoder_layer(c: Config, rope, p, h, attend):
    """One pre-norm block."""
    B, S, _ = h.shape
    H, n_kv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    assert D is not None  # set by Config.__post_init__
    a = p["self_attn"]

    x = layers.rms_norm(h, p["input_layernorm"]["scale"], c.rms_norm_eps)
    q = layers.linear(x, a["q_proj"]).reshape(B, S, H, D)
    k = layers.linear(x, a["k_proj"]).reshape(B, S, n_kv, D)
    v = layers.linear(x, a["v_proj"]).reshape(B, S, n_kv, D)
    if c.qk_norm:
        q = layers.rms_norm(q, a["q_norm"]["scale"], c.rms_norm_eps)
        k = layers.rms_norm(k, a["k_norm"]["scale"], c.rms_norm_eps)
    q, k = _rope(q, *rope), _rope(k, *rope)
    o, new_kv = attend(q, k, v, D**-0.5)
    h = h + layers.linear(o, a["o_proj"])

    m = p["mlp"]
    x = layers.rms_norm(h, p["post_attention_layernorm"]["scale"], c.rms_norm_eps)
    x = layers.activation(c.hidden_act)(layers.linear(x, m["gate_proj"])) * layers.linear(x, m["up_proj"])
    h = h + layers.linear(x, m["down_proj"])
    return h, new_kv


def _final(c: Config, params, h, dtype):
    return layers.rms_norm(h, params["norm"]["scale"], c.rms_norm_eps, dtype)


# --- model --------------------------------------------------------------------------------


class Model(decoder.CausalLM):
    """Llama-family causal LM (``LlamaForCausalLM`` and friends).

    Built and called as :class:`~zojax.models.decoder.CausalLM` describes; ``positions=`` are
    RoPE positions.

    >>> c = Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...            num_attention_heads=4, num_key_value_heads=2)
    >>> m = nnx.eval_shape(lambda: Model(c, rngs=nnx.Rngs(0)))  # abstract: shapes only
    >>> m.layers.self_attn.k_proj.kernel.shape  # (layers, d_in, kv_heads * head_dim)
    (2, 16, 8)
    """

    projections = Projections(column=("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"), row=("o_proj", "down_proj"))
    parts = decoder.Parts(
        positions=_positions_from_mask,
        embed=_embed,
        layer=_decoder_layer,
        final=_final,
        windows=lambda c: c.windows,
    )

    def __init__(self, config: Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        c = config
        self.embed_tokens = layers.Embed(c.vocab_size, c.hidden_size, param_dtype=param_dtype, rngs=rngs)
        self.layers = _Layers(c, param_dtype=param_dtype, rngs=rngs)
        self.norm = layers.RMSNorm(c.hidden_size, stack=None, param_dtype=param_dtype)
        untied = not c.tie_word_embeddings
        lin = {"bias": False, "stack": None, "param_dtype": param_dtype, "rngs": rngs}
        self.lm_head = layers.Linear(c.hidden_size, c.vocab_size, **lin) if untied else None


# The forward as a pure function of the param dict (see CausalLM.apply).
apply = Model.apply


# --- HF checkpoint mapping ----------------------------------------------------------------


def hf_param_map(config: Config) -> dict[str, ParamSpec]:
    """Map each HF ``*ForCausalLM`` tensor name to its :class:`ParamSpec`.

    ``lm_head.weight`` is present only for untied models; rotary ``inv_freq`` buffers are not
    params (loaders skip them).

    >>> m = hf_param_map(Config(vocab_size=8, hidden_size=4, intermediate_size=8,
    ...                         num_hidden_layers=1, num_attention_heads=1))
    >>> m["model.layers.0.mlp.up_proj.weight"].path
    ('layers', 'mlp', 'up_proj', 'kernel')
    """
    c = config
    out = {
        "model.embed_tokens.weight": copied(("embed_tokens", "embedding")),
        "model.norm.weight": copied(("norm", "scale")),
    }
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = transposed(("lm_head", "kernel"))
    attn_bias = {"q_proj": c.qkv_bias, "k_proj": c.qkv_bias, "v_proj": c.qkv_bias, "o_proj": c.o_bias}
    norms: list[tuple[str, ...]] = [("input_layernorm",), ("post_attention_layernorm",)]
    if c.qk_norm:
        norms += [("self_attn", "q_norm"), ("self_attn", "k_norm")]
    out |= layer_specs(
        "model.layers.{}",
        c.num_hidden_layers,
        linears=[(("self_attn", n), b) for n, b in attn_bias.items()]
        + [(("mlp", n), c.mlp_bias) for n in ("gate_proj", "up_proj", "down_proj")],
        norms=[(parts, False) for parts in norms],
    )
    return out
