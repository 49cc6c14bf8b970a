"""Llama-family decoders (Llama 2/3, Qwen2/2.5, Qwen3, Mistral, SmolLM/SmolLM2) as a Flax NNX module.

Every linear goes through :func:`zojax.nn.dense`, the token embedding through
:func:`zojax.nn.embed` and a tied LM head through :func:`zojax.nn.attend`, so any weight may
arrive as a :class:`zojax.nn.Perturbed` leaf. Decoder layers are stacked (every per-layer param
has a leading ``num_layers`` axis) and the forward scans over them, so compile time does not
grow with depth.

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

Pure-forward contract (what the zojax engine uses). With ``graphdef, state = nnx.split(model)``::

    def f(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

``f`` jits; any array of ``state`` may be replaced (``jax.tree.map`` over the state) by a
:class:`~zojax.nn.Perturbed` -- a stacked kernel as ``base (L, d_in, d_out)``, ``v (L, d_in, r)``,
``u (L, d_out, r)``; a 2-D leaf (stacked bias/norm, embedding, lm_head) as one matrix -- and ``f``
may be vmapped over a population axis carried by ``v``/``u`` and by dense leaves while every
``base`` stays unbatched (``in_axes=None``), so the population folds into the batch of the big
GEMM. The same computation is available without NNX as :func:`apply` over the plain nested dict
``nnx.to_pure_dict(state)``: ``apply(config, params, ids, mask)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax import nn as znn

__all__ = [
    "ARCHITECTURES",
    "MODEL_TYPES",
    "Config",
    "Model",
    "ParamSpec",
    "apply",
    "hf_param_map",
    "rope_frequencies",
]

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_ARCH_OF = dict(zip(MODEL_TYPES, ARCHITECTURES))

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}
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
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.hidden_act!r}; known: {sorted(_ACTIVATIONS)}")
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
    base = config.rope_theta
    p = config.rope_params
    kind = p.get("rope_type", "default")
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    scaling = 1.0
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


# --- parameter containers ------------------------------------------------------------------
# These modules only hold Params (so the state has HF-like paths); the math is in pure
# functions below that take plain arrays or Perturbed leaves.

_init = nnx.initializers.normal(0.02)


class _Linear(nnx.Module):
    def __init__(self, d_in, d_out, *, bias, stack, param_dtype, rngs):
        lead = () if stack is None else (stack,)
        self.kernel = nnx.Param(_init(rngs.params(), lead + (d_in, d_out), param_dtype))
        self.bias = nnx.Param(jnp.zeros(lead + (d_out,), param_dtype)) if bias else None


class _RMSNorm(nnx.Module):
    def __init__(self, d, *, stack, param_dtype):
        lead = () if stack is None else (stack,)
        self.scale = nnx.Param(jnp.ones(lead + (d,), param_dtype))


class _Embed(nnx.Module):
    def __init__(self, n, d, *, param_dtype, rngs):
        self.embedding = nnx.Param(_init(rngs.params(), (n, d), param_dtype))


class _Attention(nnx.Module):
    def __init__(self, c: Config, *, param_dtype, rngs):
        L, d, hd = c.num_hidden_layers, c.hidden_size, c.head_dim
        kw = {"stack": L, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = _Linear(d, c.num_attention_heads * hd, bias=c.qkv_bias, **kw)
        self.k_proj = _Linear(d, c.num_key_value_heads * hd, bias=c.qkv_bias, **kw)
        self.v_proj = _Linear(d, c.num_key_value_heads * hd, bias=c.qkv_bias, **kw)
        self.o_proj = _Linear(c.num_attention_heads * hd, d, bias=c.o_bias, **kw)
        if c.qk_norm:
            self.q_norm = _RMSNorm(hd, stack=L, param_dtype=param_dtype)
            self.k_norm = _RMSNorm(hd, stack=L, param_dtype=param_dtype)
        else:
            self.q_norm = self.k_norm = None


class _MLP(nnx.Module):
    def __init__(self, c: Config, *, param_dtype, rngs):
        kw = {"bias": c.mlp_bias, "stack": c.num_hidden_layers, "param_dtype": param_dtype, "rngs": rngs}
        self.gate_proj = _Linear(c.hidden_size, c.intermediate_size, **kw)
        self.up_proj = _Linear(c.hidden_size, c.intermediate_size, **kw)
        self.down_proj = _Linear(c.intermediate_size, c.hidden_size, **kw)


class _Layers(nnx.Module):
    """All decoder layers, stacked along a leading ``num_layers`` axis."""

    def __init__(self, c: Config, *, param_dtype, rngs):
        L = c.num_hidden_layers
        self.self_attn = _Attention(c, param_dtype=param_dtype, rngs=rngs)
        self.mlp = _MLP(c, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = _RMSNorm(c.hidden_size, stack=L, param_dtype=param_dtype)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, stack=L, param_dtype=param_dtype)


# --- pure math ----------------------------------------------------------------------------


def _rms_norm(x, scale, eps):
    # Statistics in float32 as HF does; scale applied after casting back (HF: weight * x.to(dtype)).
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return znn.materialize(scale).astype(x.dtype) * y.astype(x.dtype)


def _attention(q, k, v, valid, scale):
    """GQA softmax attention. q: (B,S,H,D); k, v: (B,T,Hkv,D); valid: (B,S,T) or (B,1,T)."""
    B, S, H, D = q.shape
    n_kv = k.shape[2]
    q = q.reshape(B, S, n_kv, H // n_kv, D)
    scores = jnp.einsum("bsngd,btnd->bngst", q, k, preferred_element_type=jnp.float32) * scale
    # A finite fill keeps fully masked rows (padding queries) NaN-free: they become uniform.
    scores = jnp.where(valid[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bngst,btnd->bsngd", probs, v).reshape(B, S, H * D)


def _linear(x, p):
    return znn.dense(x, p["kernel"], p.get("bias"))


def _decoder_layer(c: Config, p, h, cos, sin, valid, kv_cache, index):
    """One pre-norm block. ``kv_cache``: None or this layer's ``(k, v)`` (B, T, Hkv, D)."""
    B, S, _ = h.shape
    H, n_kv, D = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    a = p["self_attn"]

    x = _rms_norm(h, p["input_layernorm"]["scale"], c.rms_norm_eps)
    q = _linear(x, a["q_proj"]).reshape(B, S, H, D)
    k = _linear(x, a["k_proj"]).reshape(B, S, n_kv, D)
    v = _linear(x, a["v_proj"]).reshape(B, S, n_kv, D)
    if c.qk_norm:
        q = _rms_norm(q, a["q_norm"]["scale"], c.rms_norm_eps)
        k = _rms_norm(k, a["k_norm"]["scale"], c.rms_norm_eps)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    new_kv = None
    if kv_cache is not None:
        ck, cv = kv_cache
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
        new_kv = (ck, cv)
        k, v = ck.astype(h.dtype), cv.astype(h.dtype)
    o = _attention(q, k, v, valid, D**-0.5)
    h = h + _linear(o, a["o_proj"])

    m = p["mlp"]
    x = _rms_norm(h, p["post_attention_layernorm"]["scale"], c.rms_norm_eps)
    x = _ACTIVATIONS[c.hidden_act](_linear(x, m["gate_proj"])) * _linear(x, m["up_proj"])
    h = h + _linear(x, m["down_proj"])
    return h, new_kv


def _sliceable(x):
    """Make a stacked leaf safe to ``lax.scan`` over.

    A stacked 3-D kernel's Perturbed factors carry the layer axis and slice with it. A 2-D
    stacked leaf (bias, norm scale: ``(L, d)``) perturbed as one ``L x d`` matrix does not (its
    ``u`` is ``(d, r)``); it is small, so form it densely.
    """
    if isinstance(x, znn.Perturbed) and x.base.ndim < 3:
        return znn.materialize(x)
    return x


def _positions_from_mask(mask):
    # HF generate's convention: cumsum(mask) - 1, pads clamped to 0 (their outputs are unused).
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def apply(
    config: Config,
    params: dict,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    positions: jax.Array | None = None,
    logits_positions: jax.Array | None = None,
    logits_tokens: jax.Array | None = None,
    cache: dict[str, jax.Array] | None = None,
    dtype=jnp.float32,
):
    """The forward as a pure function of a nested param dict (``nnx.to_pure_dict(state)``).

    Same arguments and results as :meth:`Model.__call__`; leaves may be arrays or
    :class:`~zojax.nn.Perturbed`.
    """
    c = config
    B, S = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((B, S), jnp.int32)
    attention_mask = attention_mask.astype(jnp.int32)

    if cache is None:
        key_mask, index = attention_mask, None
        q_slot = k_slot = jnp.arange(S)
        if positions is None:
            positions = _positions_from_mask(attention_mask)
    else:
        index = cache["index"]
        key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index))
        q_slot = index + jnp.arange(S)
        k_slot = jnp.arange(key_mask.shape[1])
        if positions is None:
            positions = jax.lax.dynamic_slice(_positions_from_mask(key_mask), (0, index), (B, S))
    # valid[b, s, t]: query slot s may see key slot t (causal, and t holds a real token).
    # Masks are over slots, not positions, as in HF (matters for sliding windows with padding).
    valid = (k_slot[None, None, :] <= q_slot[None, :, None]) & (key_mask[:, None, :] > 0)

    inv_freq, rope_scale = rope_frequencies(c)
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
    angles = jnp.concatenate([angles, angles], axis=-1)
    cos = (jnp.cos(angles) * rope_scale).astype(dtype)
    sin = (jnp.sin(angles) * rope_scale).astype(dtype)

    table = params["embed_tokens"]["embedding"]
    h = znn.embed(input_ids, table).astype(dtype)

    layer_params = jax.tree.map(_sliceable, params["layers"], is_leaf=znn.is_perturbed)
    windows = c.windows
    window_xs = None
    if any(w is not None for w in windows):
        big = np.iinfo(np.int32).max // 2
        window_xs = jnp.asarray([big if w is None else w for w in windows], jnp.int32)

    def body(h, xs):
        p, kv, window = xs
        ok = valid
        if window is not None:  # HF: key slot t visible iff t > s - window
            ok = valid & (k_slot[None, None, :] > q_slot[None, :, None] - window)
        return _decoder_layer(c, p, h, cos, sin, ok, kv, index)

    kv_xs = None if cache is None else (cache["k"], cache["v"])
    h, new_kv = jax.lax.scan(body, h, (layer_params, kv_xs, window_xs))

    if logits_positions is not None:
        # Per-token ops from here on: gather first so the head runs only where needed.
        h = jnp.take_along_axis(h, logits_positions[..., None].astype(jnp.int32), axis=1)
    h = _rms_norm(h, params["norm"]["scale"], c.rms_norm_eps)
    if logits_tokens is not None:
        head = {"table": table} if c.tie_word_embeddings else {"kernel": params["lm_head"]["kernel"]}
        logits = znn.token_logits(h, logits_tokens, **head)
    elif c.tie_word_embeddings:
        logits = znn.attend(h, table)
    else:
        logits = znn.dense(h, params["lm_head"]["kernel"])
    logits = logits.astype(jnp.float32)
    if cache is None:
        return logits
    new_cache = {"k": new_kv[0], "v": new_kv[1], "mask": key_mask, "index": index + S}
    return logits, new_cache


# --- model --------------------------------------------------------------------------------


class Model(nnx.Module):
    """Llama-family causal LM (``LlamaForCausalLM`` and friends).

    Args:
      config: the model's :class:`Config`.
      dtype: compute dtype (activations, matmuls). Softmax and RMSNorm statistics run in
        float32 regardless.
      param_dtype: storage dtype of the params.
      rngs: random init (weights are normally overwritten by a loader).

    >>> c = Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...            num_attention_heads=4, num_key_value_heads=2)
    >>> m = nnx.eval_shape(lambda: Model(c, rngs=nnx.Rngs(0)))  # abstract: shapes only
    >>> m.layers.self_attn.k_proj.kernel.shape  # (layers, d_in, kv_heads * head_dim)
    (2, 16, 8)
    """

    def __init__(self, config: Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype
        c = config
        self.embed_tokens = _Embed(c.vocab_size, c.hidden_size, param_dtype=param_dtype, rngs=rngs)
        self.layers = _Layers(c, param_dtype=param_dtype, rngs=rngs)
        self.norm = _RMSNorm(c.hidden_size, stack=None, param_dtype=param_dtype)
        if c.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _Linear(
                c.hidden_size, c.vocab_size, bias=False, stack=None, param_dtype=param_dtype, rngs=rngs
            )

    def init_cache(self, batch: int, max_len: int, dtype=None) -> dict[str, jax.Array]:
        """An empty KV cache for :meth:`__call__`.

        A dict pytree: ``k``, ``v`` of shape ``(num_layers, batch, max_len, kv_heads, head_dim)``,
        ``mask`` ``(batch, max_len)`` (int32, 1 where a slot holds a real token: it remembers the
        padding of earlier calls) and ``index`` (int32 scalar, the next free slot).
        """
        c = self.config
        dtype = self.dtype if dtype is None else dtype
        shape = (c.num_hidden_layers, batch, max_len, c.num_key_value_heads, c.head_dim)
        return {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "mask": jnp.zeros((batch, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        logits_positions: jax.Array | None = None,
        logits_tokens: jax.Array | None = None,
        cache: dict[str, jax.Array] | None = None,
    ):
        """Next-token logits.

        Args:
          input_ids: int ``(batch, seq)``.
          attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding (left or right).
            With ``cache`` it covers only the new tokens; earlier ones are remembered by the cache.
          positions: int ``(batch, seq)`` RoPE positions. Default: ``cumsum(mask) - 1`` (over
            cached + new tokens when a cache is given), so left padding starts real tokens at 0.
          logits_positions: int ``(batch, P)`` indices into ``seq``; if given, the final norm and
            LM head run only there and logits are ``(batch, P, vocab)``.
          logits_tokens: int ``(batch, seq or P, K)`` vocabulary ids; if given, only their logits
            are computed (the head's rows for those tokens) and logits are ``(batch, seq or P, K)``.
          cache: from :meth:`init_cache`; the new tokens are written at ``cache["index"]``.

        Returns:
          float32 logits ``(batch, seq or P, vocab)``; with ``cache``, ``(logits, new_cache)``.
        """
        # Variable values may be Perturbed pytrees, so read them through the pure-dict view.
        params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
        return apply(
            self.config,
            params,
            input_ids,
            attention_mask,
            positions=positions,
            logits_positions=logits_positions,
            logits_tokens=logits_tokens,
            cache=cache,
            dtype=self.dtype,
        )


# --- HF checkpoint mapping ----------------------------------------------------------------


class ParamSpec(NamedTuple):
    """Where one HF tensor lives in zojax's state.

    Attributes:
      path: key path into ``nnx.split(model)[1]``, e.g. ``("layers", "mlp", "up_proj", "kernel")``.
      layer: index into the leading stacked axis, or None for unstacked params.
      to_zojax: HF array (numpy) -> zojax layout (one layer's slice).
      to_hf: inverse.
    """

    path: tuple[str, ...]
    layer: int | None
    to_zojax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _identity(x):
    return x


def _transpose(x):
    # torch Linear stores (d_out, d_in); zojax kernels are (d_in, d_out).
    return x.T


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
    out: dict[str, ParamSpec] = {
        "model.embed_tokens.weight": ParamSpec(("embed_tokens", "embedding"), None, _identity, _identity),
        "model.norm.weight": ParamSpec(("norm", "scale"), None, _identity, _identity),
    }
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = ParamSpec(("lm_head", "kernel"), None, _transpose, _transpose)
    linears = [
        ("self_attn", n, b)
        for n, b in (
            ("q_proj", c.qkv_bias),
            ("k_proj", c.qkv_bias),
            ("v_proj", c.qkv_bias),
            ("o_proj", c.o_bias),
        )
    ]
    linears += [("mlp", n, c.mlp_bias) for n in ("gate_proj", "up_proj", "down_proj")]
    norms = [("input_layernorm",), ("post_attention_layernorm",)]
    if c.qk_norm:
        norms += [("self_attn", "q_norm"), ("self_attn", "k_norm")]
    for i in range(c.num_hidden_layers):
        pre = f"model.layers.{i}."
        for group, name, bias in linears:
            hf = f"{pre}{group}.{name}"
            out[hf + ".weight"] = ParamSpec(("layers", group, name, "kernel"), i, _transpose, _transpose)
            if bias:
                out[hf + ".bias"] = ParamSpec(("layers", group, name, "bias"), i, _identity, _identity)
        for parts in norms:
            out[pre + ".".join(parts) + ".weight"] = ParamSpec(
                ("layers", *parts, "scale"), i, _identity, _identity
            )
    return out
