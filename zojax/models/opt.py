"""OPT (facebook/opt-125m ... opt-13b) as a Flax NNX module that runs on zojax's adapter path.

The decoder skeleton, the pure-forward contract the engine relies on (any leaf may be a
:class:`zojax.nn.Perturbed`, a population vmaps with unbatched bases) and the KV cache are
:mod:`zojax.models.decoder`'s; this module holds what OPT does differently: learned positions
(offset by 2), LayerNorm before or (opt-350m) after each block, ``project_in``/``project_out``
when the embedding is narrower than the model, and the LM head always tied.

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
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import nnx

from zojax import nn as znn
from zojax.layout import Projections
from zojax.models import decoder, layers
from zojax.models.family import ParamSpec, copied, layer_specs, linear_specs, norm_specs

__all__ = ["ARCHITECTURES", "MODEL_TYPES", "Config", "Model", "ParamSpec", "apply", "hf_param_map"]

ARCHITECTURES = ("OPTForCausalLM",)
MODEL_TYPES = ("opt",)

# OPT's learned positions are looked up at ``position + 2`` (fairseq kept two slots for padding).
POSITION_OFFSET = 2
_LN_EPS = 1e-5  # torch.nn.LayerNorm's default, which OPT uses everywhere


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
        layers.activation(self.activation_function)  # raises for an unknown name
        if not self.tie_word_embeddings:
            # Every released OPT checkpoint ties lm_head to embed_tokens.
            raise NotImplementedError("OPT with an untied lm_head is not supported")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        """OPT is plain multi-head attention: as many key/value heads as query heads."""
        return self.num_attention_heads

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

        hf_names = {"remove_final_layer_norm": "_remove_final_layer_norm"}  # where OPTConfig differs
        kw = {hf_names.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        return OPTConfig(**kw, architectures=list(ARCHITECTURES))


# --- parameter containers ------------------------------------------------------------------


class _Attention(nnx.Module):
    def __init__(self, config: Config, *, param_dtype, rngs):
        d, L = config.hidden_size, config.num_hidden_layers
        kw = {"bias": config.enable_bias, "stack": L, "param_dtype": param_dtype, "rngs": rngs}
        self.q_proj = layers.Linear(d, d, **kw)
        self.k_proj = layers.Linear(d, d, **kw)
        self.v_proj = layers.Linear(d, d, **kw)
        self.out_proj = layers.Linear(d, d, **kw)


class _Layers(nnx.Module):
    """All decoder layers, stacked along a leading ``num_layers`` axis."""

    def __init__(self, config: Config, *, param_dtype, rngs):
        d, L = config.hidden_size, config.num_hidden_layers
        ln = {"affine": config.layer_norm_elementwise_affine, "stack": L, "param_dtype": param_dtype}
        lin = {"bias": config.enable_bias, "stack": L, "param_dtype": param_dtype, "rngs": rngs}
        self.self_attn = _Attention(config, param_dtype=param_dtype, rngs=rngs)
        self.self_attn_layer_norm = layers.LayerNorm(d, **ln)
        self.fc1 = layers.Linear(d, config.ffn_dim, **lin)
        self.fc2 = layers.Linear(config.ffn_dim, d, **lin)
        self.final_layer_norm = layers.LayerNorm(d, **ln)


# --- pure math ----------------------------------------------------------------------------


def _layer_norm(x, p, dtype):
    return layers.layer_norm(x, p, dtype, _LN_EPS)


def _positions_from_mask(mask):
    # HF OPT: cumsum(mask) * mask - 1, so left padding starts real tokens at 0 and pads sit at -1
    # (embedding row 1 after the offset; their outputs are unused).
    mask = mask.astype(jnp.int32)
    return jnp.cumsum(mask, axis=-1) * mask - 1


def _embed(c: Config, params, input_ids, positions, dtype):
    h = znn.embed(input_ids, params["embed_tokens"]["embedding"]).astype(dtype)
    if c.has_projections:
        h = znn.dense(h, params["project_in"]["kernel"])
    pos = znn.embed(positions + POSITION_OFFSET, params["embed_positions"]["embedding"])
    return h + pos.astype(dtype), None


def _decoder_layer(c: Config, _context, p, h, attend):
    """One OPT block, pre-LN or (opt-350m) post-LN. No context: positions are in the embedding."""
    B, S, _ = h.shape
    H, D = c.num_attention_heads, c.head_dim
    pre = c.do_layer_norm_before
    a = p["self_attn"]
    ln_attn, ln_ffn = p.get("self_attn_layer_norm", {}), p.get("final_layer_norm", {})

    residual = h
    x = _layer_norm(h, ln_attn, h.dtype) if pre else h
    # OPT scales q after q_proj (bias included), as HF does, so attend() gets no scale.
    q = layers.linear(x, a["q_proj"]) * (D**-0.5)
    k = layers.linear(x, a["k_proj"])
    v = layers.linear(x, a["v_proj"])
    o, new_kv = attend(*(t.reshape(B, S, H, D) for t in (q, k, v)))
    h = residual + layers.linear(o, a["out_proj"])
    if not pre:
        h = _layer_norm(h, ln_attn, h.dtype)

    residual = h
    x = _layer_norm(h, ln_ffn, h.dtype) if pre else h
    x = layers.activation(c.activation_function)(layers.linear(x, p["fc1"]))
    h = residual + layers.linear(x, p["fc2"])
    if not pre:
        h = _layer_norm(h, ln_ffn, h.dtype)
    return h, new_kv


def _final(c: Config, params, h, dtype):
    if c.has_final_layer_norm:
        h = _layer_norm(h, params.get("final_layer_norm", {}), dtype)
    if c.has_projections:
        h = znn.dense(h, params["project_out"]["kernel"])
    return h


# --- model --------------------------------------------------------------------------------


class Model(decoder.CausalLM):
    """OPT decoder with the LM head tied to ``embed_tokens`` (``OPTForCausalLM``).

    Built and called as :class:`~zojax.models.decoder.CausalLM` describes. ``positions=`` follow
    HF (first real token 0); OPT's +2 offset into ``embed_positions`` is added here.

    >>> c = Config(vocab_size=32, hidden_size=16, ffn_dim=32, num_hidden_layers=2,
    ...            num_attention_heads=4, max_position_embeddings=16)
    >>> Model(c, rngs=nnx.Rngs(0))(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 32)
    """

    projections = Projections(column=("q_proj", "k_proj", "v_proj", "fc1"), row=("out_proj", "fc2"))
    parts = decoder.Parts(positions=_positions_from_mask, embed=_embed, layer=_decoder_layer, final=_final)

    def __init__(self, config: Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype)
        c = config
        emb = {"param_dtype": param_dtype, "rngs": rngs}
        self.embed_tokens = layers.Embed(c.vocab_size, c.word_embed_proj_dim, **emb)
        self.embed_positions = layers.Embed(c.max_position_embeddings + POSITION_OFFSET, c.hidden_size, **emb)
        # NNX fixes an attribute as data or static at its first assignment: assign each once.
        lin = {"bias": False, "stack": None, "param_dtype": param_dtype, "rngs": rngs}
        proj = c.has_projections
        self.project_in = layers.Linear(c.word_embed_proj_dim, c.hidden_size, **lin) if proj else None
        self.project_out = layers.Linear(c.hidden_size, c.word_embed_proj_dim, **lin) if proj else None
        affine = c.layer_norm_elementwise_affine
        self.final_layer_norm = (
            layers.LayerNorm(c.hidden_size, affine=affine, stack=None, param_dtype=param_dtype)
            if c.has_final_layer_norm
            else None
        )
        self.layers = _Layers(c, param_dtype=param_dtype, rngs=rngs)


# The forward as a pure function of the param dict (see CausalLM.apply).
apply = Model.apply


# --- HF checkpoint mapping ----------------------------------------------------------------


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
    pre = "model.decoder."
    out = {
        pre + "embed_tokens.weight": copied(("embed_tokens", "embedding")),
        pre + "embed_positions.weight": copied(("embed_positions", "embedding")),
    }
    if c.has_projections:
        for name in ("project_in", "project_out"):
            out.update(linear_specs(pre + name, (name,), bias=False))
    affine = c.layer_norm_elementwise_affine
    if c.has_final_layer_norm and affine:
        out.update(norm_specs(pre + "final_layer_norm", ("final_layer_norm",), bias=True))
    attn = [("self_attn", p) for p in ("q_proj", "k_proj", "v_proj", "out_proj")]
    out |= layer_specs(
        pre + "layers.{}",
        c.num_hidden_layers,
        linears=[(parts, c.enable_bias) for parts in (*attn, ("fc1",), ("fc2",))],
        norms=[((n,), True) for n in ("self_attn_layer_norm", "final_layer_norm") if affine],
    )
    return out
