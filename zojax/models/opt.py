"""OPT (facebook/opt-125m ... opt-13b) as a Flax NNX module that runs on zojax's adapter path.

Every linear goes through :func:`zojax.nn.dense`, the token and position embeddings through
:func:`zojax.nn.embed` and the tied LM head through :func:`zojax.nn.attend`, so any weight may
arrive as a :class:`zojax.nn.Perturbed` leaf. Decoder layers are stacked (each per-layer param
has a leading ``num_layers`` axis) and the forward scans over them, so compile time does not
grow with depth.

Param paths (``nnx.split(model)[1]``)::

    embed_tokens/embedding            (vocab, word_embed_proj_dim)
    embed_positions/embedding         (max_position_embeddings + 2, hidden)
    project_in/kernel                 (word_embed_proj_dim, hidden)    only if the dims differ
    project_out/kernel                (hidden, word_embed_proj_dim)    only if the dims differ
    final_layer_norm/{scale,bias}     (hidden,)                        pre-LN models only
    layers/self_attn/{q,k,v,out}_proj/{kernel,bias}   (L, d, d), (L, d)
    layers/self_attn_layer_norm/{scale,bias}          (L, d)
    layers/fc1/{kernel,bias}                          (L, d, ffn), (L, ffn)
    layers/fc2/{kernel,bias}                          (L, ffn, d), (L, d)
    layers/final_layer_norm/{scale,bias}              (L, d)

Pure-forward contract: with ``graphdef, state = nnx.split(model)``,
``f(state, ids, mask) = nnx.merge(graphdef, state)(ids, mask)`` jits; any array of ``state``
may be replaced by a :class:`~zojax.nn.Perturbed` (a stacked kernel as ``base (L, d_in, d_out)``,
``v (L, d_in, r)``, ``u (L, d_out, r)``; a 2-D leaf such as a stacked bias or an embedding as
one matrix), and ``f`` may be vmapped over a population axis carried by ``v``/``u`` and by
dense leaves while every ``base`` stays unbatched (``in_axes=None``), so the population folds
into the batch of the big GEMM. The same computation is available without NNX as :func:`apply`
over the plain nested dict ``nnx.to_pure_dict(state)``: ``apply(config, params, ids, mask)``.
"""

from __future__ import annotations

import dataclasses
import functools
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
]

ARCHITECTURES = ("OPTForCausalLM",)
MODEL_TYPES = ("opt",)

# OPT's learned positions are looked up at ``position + 2`` (fairseq kept two slots for padding).
POSITION_OFFSET = 2
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which OPT uses everywhere

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


# --- config -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters of an OPT decoder, mirroring :class:`transformers.OPTConfig`.

    >>> Config(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
    ...        num_attention_heads=2).head_dim
    8
    """

    vocab_size: int = 50272
    hidden_size: int = 768
    num_hidden_layers: int = 12
    ffn_dim: int = 3072
    num_attention_heads: int = 12
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int | None = None  # None: same as hidden_size
    do_layer_norm_before: bool = True  # False only for opt-350m (post-LN)
    remove_final_layer_norm: bool = False  # HF's ``_remove_final_layer_norm`` (pre-v4.20 fine-tunes)
    enable_bias: bool = True
    layer_norm_elementwise_affine: bool = True
    activation_function: str = "relu"
    pad_token_id: int | None = 1
    bos_token_id: int | None = 2
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.word_embed_proj_dim is None:
            object.__setattr__(self, "word_embed_proj_dim", self.hidden_size)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(f"unsupported OPT activation {self.activation_function!r}")
        if not self.tie_word_embeddings:
            # Every released OPT checkpoint ties lm_head to embed_tokens.
            raise NotImplementedError("OPT with an untied lm_head is not supported")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def has_final_layer_norm(self) -> bool:
        """Whether the decoder ends in a LayerNorm (pre-LN models only, as in HF)."""
        return self.do_layer_norm_before and not self.remove_final_layer_norm

    @property
    def has_projections(self) -> bool:
        """Whether embeddings are projected in/out of the hidden width (opt-350m)."""
        return self.word_embed_proj_dim != self.hidden_size

    @classmethod
    def from_hf(cls, hf_config: Any) -> Config:
        """Build from a :class:`transformers.OPTConfig` (or anything with the same attributes)."""
        eos = getattr(hf_config, "eos_token_id", 2)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return cls(
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            ffn_dim=hf_config.ffn_dim,
            num_attention_heads=hf_config.num_attention_heads,
            max_position_embeddings=hf_config.max_position_embeddings,
            word_embed_proj_dim=getattr(hf_config, "word_embed_proj_dim", None),
            do_layer_norm_before=getattr(hf_config, "do_layer_norm_before", True),
            remove_final_layer_norm=getattr(hf_config, "_remove_final_layer_norm", False),
            enable_bias=getattr(hf_config, "enable_bias", True),
            layer_norm_elementwise_affine=getattr(hf_config, "layer_norm_elementwise_affine", True),
            activation_function=getattr(hf_config, "activation_function", "relu"),
            pad_token_id=getattr(hf_config, "pad_token_id", 1),
            bos_token_id=getattr(hf_config, "bos_token_id", 2),
            eos_token_id=eos,
            tie_word_embeddings=getattr(hf_config, "tie_word_embeddings", True),
        )

    def to_hf(self):
        """The equivalent :class:`transformers.OPTConfig` (for export and parity tests)."""
        from transformers import OPTConfig

        return OPTConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            ffn_dim=self.ffn_dim,
            num_attention_heads=self.num_attention_heads,
            max_position_embeddings=self.max_position_embeddings,
            word_embed_proj_dim=self.word_embed_proj_dim,
            do_layer_norm_before=self.do_layer_norm_before,
            _remove_final_layer_norm=self.remove_final_layer_norm,
            enable_bias=self.enable_bias,
            layer_norm_elementwise_affine=self.layer_norm_elementwise_affine,
            activation_function=self.activation_function,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            tie_word_embeddings=self.tie_word_embeddings,
            architectures=list(ARCHITECTURES),
        )


# --- parameter containers ------------------------------------------------------------------
# These modules only hold Params (so the state has HF-like paths); the math lives in pure
# functions below that take plain arrays or Perturbed leaves.


def _normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
    """N(0, std^2) init. Eagerly it draws on the host: jax's threefry compiles once per
    distinct shape (about 0.3 s each on CPU, seconds for even a tiny model), and these
    weights are placeholders a loader overwrites. Traced (jit, ``nnx.eval_shape``) it stays
    in jax, so abstract construction allocates nothing."""
    key = rngs.params()
    try:
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    except jax.errors.TracerArrayConversionError:
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * std
    return jnp.asarray(x, dtype=dtype)


class _Linear(nnx.Module):
    def __init__(self, d_in, d_out, *, bias, stack, param_dtype, rngs):
        lead = () if stack is None else (stack,)
        self.kernel = nnx.Param(_normal(rngs, lead + (d_in, d_out), param_dtype))
        self.bias = nnx.Param(jnp.zeros(lead + (d_out,), param_dtype)) if bias else None


class _LayerNorm(nnx.Module):
    def __init__(self, d, *, affine, stack, param_dtype):
        lead = () if stack is None else (stack,)
        self.scale = nnx.Param(jnp.ones(lead + (d,), param_dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros(lead + (d,), param_dtype)) if affine else None


class _Embed(nnx.Module):
    def __init__(self, n, d, *, param_dtype, rngs):
        self.embedding = nnx.Param(_normal(rngs, (n, d), param_dtype))


class _Attention(nnx.Module):
    def __init__(self, config: Config, *, param_dtype, rngs):
        d, L = config.hidden_size, config.num_hidden_layers
        kw = {"bias": config.enable_bias, "stack": L, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = _Linear(d, d, **kw)
        self.k_proj = _Linear(d, d, **kw)
        self.v_proj = _Linear(d, d, **kw)
        self.out_proj = _Linear(d, d, **kw)


class _Layers(nnx.Module):
    """All decoder layers, stacked along a leading ``num_layers`` axis."""

    def __init__(self, config: Config, *, param_dtype, rngs):
        d, L = config.hidden_size, config.num_hidden_layers
        ln = {"affine": config.layer_norm_elementwise_affine, "stack": L, "param_dtype": param_dtype}
        lin = {"bias": config.enable_bias, "stack": L, "param_dtype": param_dtype, "rngs": rngs}
        self.self_attn = _Attention(config, param_dtype=param_dtype, rngs=rngs)
        self.self_attn_layer_norm = _LayerNorm(d, **ln)
        self.fc1 = _Linear(d, config.ffn_dim, **lin)
        self.fc2 = _Linear(config.ffn_dim, d, **lin)
        self.final_layer_norm = _LayerNorm(d, **ln)


def _sliceable(x):
    """Make a stacked leaf safe to ``lax.scan`` over.

    A stacked 3-D kernel's Perturbed factors carry the layer axis and slice with it. A 2-D
    stacked leaf (bias, norm scale: ``(L, d)``) perturbed as one ``L x d`` matrix does not: its
    ``u`` is ``(d, r)``; it is small, so form it densely.
    """
    if isinstance(x, znn.Perturbed) and x.base.ndim < 3:
        return znn.materialize(x)
    return x


# --- pure math ----------------------------------------------------------------------------


def _layer_norm(x, p, dtype):
    # Statistics in float32: bf16 variance of wide activations loses too many bits.
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + _LN_EPS)
    if p.get("scale") is not None:
        y = y * znn.materialize(p["scale"]).astype(jnp.float32)
    if p.get("bias") is not None:
        y = y + znn.materialize(p["bias"]).astype(jnp.float32)
    return y.astype(dtype)


def _attention(q, k, v, valid):
    """Softmax attention. q: (B,S,H,D) already scaled; k, v: (B,T,H,D); valid: (B,S,T)."""
    scores = jnp.einsum("bshd,bthd->bhst", q, k, preferred_element_type=jnp.float32)
    # A finite fill keeps fully masked rows (left padding) NaN-free: they become uniform.
    scores = jnp.where(valid[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhst,bthd->bshd", probs, v)


def _linear(x, p):
    return znn.dense(x, p["kernel"], p.get("bias"))


def _decoder_layer(config: Config, p, h, valid, kv_cache, index):
    """One OPT block. ``kv_cache``: None or this layer's ``(k, v)`` of shape (B, T, H, D)."""
    B, S, _ = h.shape
    H, D = config.num_attention_heads, config.head_dim
    act = _ACTIVATIONS[config.activation_function]
    pre = config.do_layer_norm_before
    a = p["self_attn"]
    ln_attn, ln_ffn = p.get("self_attn_layer_norm", {}), p.get("final_layer_norm", {})

    residual = h
    x = _layer_norm(h, ln_attn, h.dtype) if pre else h
    # OPT scales q after q_proj (bias included), as HF does.
    q = _linear(x, a["q_proj"]) * (D**-0.5)
    k = _linear(x, a["k_proj"])
    v = _linear(x, a["v_proj"])
    q, k, v = (t.reshape(B, S, H, D) for t in (q, k, v))
    new_kv = None
    if kv_cache is not None:
        ck, cv = kv_cache
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, index, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, index, 0, 0))
        new_kv = (ck, cv)
        k, v = ck.astype(h.dtype), cv.astype(h.dtype)
    o = _attention(q, k, v, valid).reshape(B, S, H * D)
    h = residual + _linear(o, a["out_proj"])
    if not pre:
        h = _layer_norm(h, ln_attn, h.dtype)

    residual = h
    x = _layer_norm(h, ln_ffn, h.dtype) if pre else h
    x = act(_linear(x, p["fc1"]))
    h = residual + _linear(x, p["fc2"])
    if not pre:
        h = _layer_norm(h, ln_ffn, h.dtype)
    return h, new_kv


def _positions_from_mask(mask):
    # HF OPT: cumsum(mask) * mask - 1, so left padding starts real tokens at 0 and pads sit at -1
    # (embedding row 1 after the offset; their outputs are unused).
    mask = mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=-1) * mask - 1


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
    if attention_mask.shape != (B, S):
        # HF passes past + new tokens' mask when caching; here the cache remembers the past.
        raise ValueError(
            f"attention_mask must have the shape of input_ids {(B, S)} (with a cache: the new "
            f"tokens only), got {attention_mask.shape}"
        )
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
    valid = (k_slot[None, None, :] <= q_slot[None, :, None]) & (key_mask[:, None, :] > 0)

    table = params["embed_tokens"]["embedding"]
    h = znn.embed(input_ids, table).astype(dtype)
    if c.has_projections:
        h = znn.dense(h, params["project_in"]["kernel"])
    pos = znn.embed(positions + POSITION_OFFSET, params["embed_positions"]["embedding"])
    h = h + pos.astype(dtype)

    layer_params = jax.tree.map(_sliceable, params["layers"], is_leaf=znn.is_perturbed)

    def body(h, xs):
        p, kv = xs
        return _decoder_layer(c, p, h, valid, kv, index)

    kv_xs = None if cache is None else (cache["k"], cache["v"])
    h, new_kv = jax.lax.scan(body, h, (layer_params, kv_xs))

    if logits_positions is not None:
        # Per-token ops from here on: gather first so the head runs only where needed.
        h = jnp.take_along_axis(h, logits_positions[..., None].astype(jnp.int32), axis=1)
    if c.has_final_layer_norm:
        h = _layer_norm(h, params.get("final_layer_norm", {}), dtype)
    if c.has_projections:
        h = znn.dense(h, params["project_out"]["kernel"])
    if logits_tokens is not None:
        logits = znn.token_logits(h, logits_tokens, table=table).astype(jnp.float32)
    else:
        logits = znn.attend(h, table).astype(jnp.float32)
    if cache is None:
        return logits
    new_cache = {"k": new_kv[0], "v": new_kv[1], "mask": key_mask, "index": index + S}
    return logits, new_cache


# --- model --------------------------------------------------------------------------------


class Model(nnx.Module):
    """OPT decoder with the LM head tied to ``embed_tokens`` (``OPTForCausalLM``).

    Args:
      config: the model's :class:`Config`.
      dtype: compute dtype (activations, matmuls). Softmax and LayerNorm statistics run in
        float32 regardless.
      param_dtype: storage dtype of the params.
      rngs: random init (weights are normally overwritten by a loader).

    >>> c = Config(vocab_size=32, hidden_size=16, ffn_dim=32, num_hidden_layers=2,
    ...            num_attention_heads=4, max_position_embeddings=16)
    >>> Model(c, rngs=nnx.Rngs(0))(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 32)
    """

    def __init__(
        self,
        config: Config,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype
        c = config
        self.embed_tokens = _Embed(c.vocab_size, c.word_embed_proj_dim, param_dtype=param_dtype, rngs=rngs)
        self.embed_positions = _Embed(
            c.max_position_embeddings + POSITION_OFFSET, c.hidden_size, param_dtype=param_dtype, rngs=rngs
        )
        if c.has_projections:
            lin = {"bias": False, "stack": None, "param_dtype": param_dtype, "rngs": rngs}
            self.project_in = _Linear(c.word_embed_proj_dim, c.hidden_size, **lin)
            self.project_out = _Linear(c.hidden_size, c.word_embed_proj_dim, **lin)
        else:
            self.project_in = None
            self.project_out = None
        if c.has_final_layer_norm:
            self.final_layer_norm = _LayerNorm(
                c.hidden_size, affine=c.layer_norm_elementwise_affine, stack=None, param_dtype=param_dtype
            )
        else:
            self.final_layer_norm = None
        self.layers = _Layers(c, param_dtype=param_dtype, rngs=rngs)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> dict[str, jax.Array]:
        """An empty KV cache for :meth:`__call__`.

        A dict pytree: ``k``, ``v`` of shape ``(num_layers, batch, max_len, heads, head_dim)``,
        ``mask`` ``(batch, max_len)`` (int32, 1 where a slot holds a real token: it remembers the
        padding of earlier calls) and ``index`` (int32 scalar, the next free slot).
        """
        c = self.config
        dtype = self.dtype if dtype is None else dtype
        shape = (c.num_hidden_layers, batch, max_len, c.num_attention_heads, c.head_dim)
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
          positions: int ``(batch, seq)`` position ids in HF's convention (first real token 0;
            OPT's +2 offset is added here). Default: as HF, ``cumsum(mask) * mask - 1`` (over
            cached + new tokens when a cache is given).
          logits_positions: int ``(batch, P)`` indices into ``seq``; if given, the final norm,
            project_out and LM head run only there and logits are ``(batch, P, vocab)``.
          logits_tokens: int ``(batch, seq or P, K)`` vocabulary ids; if given, only their logits
            are computed (the head's rows for those tokens) and logits are ``(batch, seq or P, K)``.
          cache: from :meth:`init_cache`; the new tokens are written at ``cache["index"]``
            (``index + seq`` must not exceed its ``max_len``: XLA would clamp the write).

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
      path: key path into ``nnx.split(model)[1]``, e.g. ``("layers", "fc1", "kernel")``.
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
    """Map each HF ``OPTForCausalLM`` tensor name to its :class:`ParamSpec`.

    Names are as ``OPTForCausalLM.state_dict()`` / ``save_pretrained`` write them in
    transformers 5 (``model.decoder....``). ``lm_head.weight`` is absent: it is tied to
    ``model.decoder.embed_tokens.weight``. Original facebook/opt-* checkpoints were saved from
    ``OPTModel`` and lack the ``model.`` prefix; loaders should add it.

    >>> m = hf_param_map(Config(vocab_size=8, hidden_size=4, num_hidden_layers=1, ffn_dim=8,
    ...                         num_attention_heads=1))
    >>> m["model.decoder.layers.0.fc1.weight"].path
    ('layers', 'fc1', 'kernel')
    """
    c = config
    out: dict[str, ParamSpec] = {}
    pre = "model.decoder."
    out[pre + "embed_tokens.weight"] = ParamSpec(("embed_tokens", "embedding"), None, _identity, _identity)
    out[pre + "embed_positions.weight"] = ParamSpec(
        ("embed_positions", "embedding"), None, _identity, _identity
    )
    if c.has_projections:
        for name in ("project_in", "project_out"):
            out[pre + f"{name}.weight"] = ParamSpec((name, "kernel"), None, _transpose, _transpose)
    if c.has_final_layer_norm and c.layer_norm_elementwise_affine:
        out[pre + "final_layer_norm.weight"] = ParamSpec(
            ("final_layer_norm", "scale"), None, _identity, _identity
        )
        out[pre + "final_layer_norm.bias"] = ParamSpec(
            ("final_layer_norm", "bias"), None, _identity, _identity
        )

    linears = [("self_attn", p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")] + [("fc1",), ("fc2",)]
    norms = ["self_attn_layer_norm", "final_layer_norm"]
    for i in range(c.num_hidden_layers):
        lp = pre + f"layers.{i}."
        for parts in linears:
            hf = lp + ".".join(parts)
            out[hf + ".weight"] = ParamSpec(("layers", *parts, "kernel"), i, _transpose, _transpose)
            if c.enable_bias:
                out[hf + ".bias"] = ParamSpec(("layers", *parts, "bias"), i, _identity, _identity)
        if c.layer_norm_elementwise_affine:
            for n in norms:
                out[lp + n + ".weight"] = ParamSpec(("layers", n, "scale"), i, _identity, _identity)
                out[lp + n + ".bias"] = ParamSpec(("layers", n, "bias"), i, _identity, _identity)
    return out
