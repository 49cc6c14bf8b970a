"""The causal decoder every family runs: masks, positions, the layer scan, the KV cache, the LM head.

A family supplies only what its forward does differently, as :class:`Parts`;
:meth:`CausalLM.apply` is the rest, the same for all::

    key slots and positions from the mask (and cache)
    h, context = parts.embed(...)                       # token (+ position) embedding, RoPE tables
    h = lax.scan of parts.layer over the stacked layers  # attend() writes this layer's cache
    gather logits_positions; h = parts.final(...)        # final norm, projections
    logits from the tied embedding or the lm_head        # optionally only at logits_tokens

Decoder layers are stacked (every per-layer param has a leading ``num_layers`` axis, under
``layers/``) so the scan compiles one layer whatever the depth. :class:`CausalLM` is the NNX base
of the family models: ``__call__`` reads its params as a pure dict and runs ``apply``.

Pure-forward contract (what the zojax engine uses). With ``graphdef, state = nnx.split(model)``::

    def f(state, ids, mask):
        return nnx.merge(graphdef, state)(ids, mask)

``f`` jits; any array of ``state`` may be replaced (``jax.tree.map`` over the state) by a
:class:`~zojax.nn.Perturbed` -- a stacked kernel as ``base (L, d_in, d_out)``, ``v (L, d_in, r)``,
``u (L, d_out, r)``; a 2-D leaf (stacked bias/norm, embedding, lm_head) as one matrix -- and ``f``
may be vmapped over a population axis carried by ``v``/``u`` and by dense leaves while every
``base`` stays unbatched (``in_axes=None``), so the population folds into the batch of the big
GEMM. The same computation without NNX is the family's ``apply(config, params, ids, mask)`` over
the plain nested dict ``params = nnx.to_pure_dict(state)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax import nn as znn
from zojax.layout import Projections
from zojax.models import layers
from zojax.precision import vector_dtype

__all__ = ["CausalLM", "Parts", "Slots", "lm_head"]


class Parts(NamedTuple):
    """What one family's forward does differently.

    Attributes:
      positions: ``mask (B, T) -> positions (B, T)``: default position ids from a key mask, in the
        convention of the family's HF model (first real token 0).
      embed: ``(config, params, input_ids, positions, dtype) -> (h, context)``: the input
        embedding, and what every layer reads besides its params (e.g. RoPE tables; any pytree).
      layer: ``(config, context, p, h, attend) -> (h, new_kv)``: one decoder block over one layer's
        params ``p``; it hands its heads to ``attend(q, k, v, scale=None) -> (o, new_kv)``, which
        writes ``k``, ``v`` into this layer's cache slice and attends.
      final: ``(config, params, h, dtype) -> h``: what runs between the last layer and the head,
        its result in ``dtype`` (the decoder asks for float32 under a 16-bit compute dtype).
      windows: ``config -> per-layer sliding-window sizes`` (None entries: full causal
        attention); None when the family has no sliding windows.
    """

    positions: Callable[[jax.Array], jax.Array]
    embed: Callable[..., tuple[jax.Array, Any]]
    layer: Callable[..., tuple[jax.Array, Any]]
    final: Callable[..., jax.Array]
    windows: Callable[[Any], tuple[int | None, ...]] | None = None


class Slots(NamedTuple):
    """Which cache slots this call's queries and keys sit in.

    Masks are over slots, not positions, as in HF (it matters for sliding windows with padding).
    Without a cache the slots are the sequence indices.
    """

    key_mask: jax.Array  # (B, T) int32, 1 where key slot t holds a real token (past calls too)
    # the first slot this call writes (None without a cache); the field shadows tuple.index
    index: jax.Array | None  # type: ignore[assignment]
    q_slot: jax.Array  # (S,)
    k_slot: jax.Array  # (T,)

    @classmethod
    def of(cls, input_ids: jax.Array, attention_mask: jax.Array | None, cache: dict | None) -> Slots:
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
            slots = jnp.arange(S)  # one array for both, so XLA sees q_slot == k_slot
            return cls(attention_mask, None, slots, slots)
        index = cache["index"]
        key_mask = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index))
        return cls(key_mask, index, index + jnp.arange(S), jnp.arange(key_mask.shape[1]))

    def positions(self, from_mask: Callable[[jax.Array], jax.Array]) -> jax.Array:
        """This call's default positions: ``from_mask`` over every key slot, at the query slots."""
        all_positions = from_mask(self.key_mask)
        if self.index is None:
            return all_positions
        B, S = self.key_mask.shape[0], self.q_slot.shape[0]
        return jax.lax.dynamic_slice(all_positions, (0, self.index), (B, S))

    def valid(self) -> jax.Array:
        """``valid[b, s, t]``: query slot s may see key slot t (causal, and t holds a real token)."""
        causal = self.k_slot[None, None, :] <= self.q_slot[None, :, None]
        return causal & (self.key_mask[:, None, :] > 0)

    def within(self, window: jax.Array) -> jax.Array:
        """``(1, S, T)``: key slot t is inside query slot s's sliding window (HF: t > s - window)."""
        return self.k_slot[None, None, :] > self.q_slot[None, :, None] - window


def _attend(q, k, v, scale=None, *, valid, kv_cache, layer, index, dtype):
    """Attention of one layer; with ``kv_cache`` (every layer's ``(k, v)``, ``(L, B, T, Hkv, D)``)
    the new keys and values are written at ``(layer, index)`` first and attention reads this
    layer's whole slice. Returns ``(o, the updated kv_cache or None)``."""
    new_kv = None
    if kv_cache is not None:
        ck, cv = kv_cache
        ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype)[None], (layer, 0, index, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype)[None], (layer, 0, index, 0, 0))
        new_kv = (ck, cv)
        k = jax.lax.dynamic_index_in_dim(ck, layer, keepdims=False).astype(dtype)
        v = jax.lax.dynamic_index_in_dim(cv, layer, keepdims=False).astype(dtype)
    return layers.attention(q, k, v, valid, scale), new_kv


def _window_sizes(parts: Parts, config) -> jax.Array | None:
    """Per-layer window sizes to scan over (a huge one for full layers), or None if none slides."""
    windows = () if parts.windows is None else parts.windows(config)
    if all(w is None for w in windows):
        return None
    full = np.iinfo(np.int32).max // 2
    return jnp.asarray([full if w is None else w for w in windows], jnp.int32)


def _scan_layers(parts: Parts, config, context, layer_params, h, slots: Slots, cache, unroll: bool = False):
    """Run ``parts.layer`` over the stacked layers; returns ``(h, new (k, v) or None)``.

    The KV cache rides in the scan's carry, written in place at each layer's index, not in its
    ``xs``/``ys``: a scanned-over cache is a second copy of it (``ys``), and under a population
    ``vmap`` (batch axis 0 in the decode loop's carry, 1 in a scan's ``xs``) two transposed ones.

    ``unroll``: a Python loop over static layer slices instead of ``lax.scan`` (one compiled
    body per layer: longer compiles; no dynamic slice of each layer's weights)."""
    layer_params = jax.tree.map(layers.sliceable, layer_params, is_leaf=znn.is_perturbed)
    kv = None if cache is None else (cache["k"], cache["v"])
    valid = slots.valid()

    def body(carry, xs):
        h, kv = carry
        window, layer = xs
        # The layer's weights are sliced here rather than scanned over as ``xs``: under a population ``vmap``
        # (members on axis 0) a scan's ``xs`` are transposed to put the layers first -- a second copy of every
        # member's directions, which a decode loop holds for all its steps.
        p = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False), layer_params)
        ok = valid if window is None else valid & slots.within(window)
        attend = functools.partial(_attend, valid=ok, kv_cache=kv, layer=layer, index=slots.index, dtype=h.dtype)
        return parts.layer(config, context, p, h, attend), None

    windows = _window_sizes(parts, config)
    if not unroll:
        return jax.lax.scan(body, (h, kv), (windows, jnp.arange(config.num_hidden_layers, dtype=jnp.int32)))[0]
    for i in range(config.num_hidden_layers):  # static indices: every leaf sliced on its leading axis
        (h, kv), _ = body((h, kv), (None if windows is None else windows[i], i))
    return h, kv


def lm_head(config, params: dict, h: jax.Array, logits_tokens: jax.Array | None = None, dtype=None) -> jax.Array:
    """float32 logits from the tied ``embed_tokens`` table or an untied ``lm_head`` kernel, for
    the whole vocabulary or, with ``logits_tokens (B, S, K)``, only those tokens' rows.

    ``h`` is the float32 final hidden state: a norm scale perturbed by ``eps = 1e-3`` moves it by
    about 1e-3 of itself, below bfloat16's spacing (2**-8), so the head must not round it to 16
    bits. Given tokens' logits (a few rows) are computed in full float32 precision; the whole
    vocabulary's, under a 16-bit compute ``dtype``, as two matmuls in ``dtype`` of ``h``'s high and
    low parts (:func:`zojax.nn.split_high_low`: about 16 significant bits of ``h``, at twice a
    16-bit head's cost), accumulated in float32."""
    if config.tie_word_embeddings:
        head = {"table": params["embed_tokens"]["embedding"]}
    else:
        head = {"kernel": params["lm_head"]["kernel"]}
    if logits_tokens is not None:
        # a TPU's (and a GPU's TF32) default precision would round a float32 h to fewer bits
        logits = znn.token_logits(h, logits_tokens, **head, precision=jax.lax.Precision.HIGHEST)
    else:
        project = functools.partial(znn.attend, table=head["table"]) if config.tie_word_embeddings else \
            functools.partial(znn.dense, w=head["kernel"])
        parts = [project(part, preferred_element_type=jnp.float32) for part in znn.split_high_low(h, dtype)]
        logits = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return logits.astype(jnp.float32)


class CausalLM(nnx.Module):
    """Base of the family models: the call and the KV cache over the family's :class:`Parts`.

    A family subclass sets ``parts`` and, in its ``__init__``, builds its param containers
    (:mod:`zojax.models.layers`) after ``super().__init__(config, dtype=..., param_dtype=...)``.
    Family models are built as ``Model(config, *, dtype=float32, param_dtype=float32, rngs)``.

    Args:
      config: the family's ``Config``.
      dtype: compute dtype (activations, matmuls). Softmax and norm statistics run in float32
        regardless.
      param_dtype: storage dtype of the params.
      rngs: random init (weights are normally overwritten by a loader).
    """

    parts: ClassVar[Parts]
    # Regex over param paths (``zojax.paths.path_str`` of ``nnx.state(model, nnx.Param)``) matching
    # exactly the leaves with a leading stacked-layer axis: see zojax.models.stacked_paths.
    stacked_paths: ClassVar[str] = r"^layers/"
    # The attention and MLP projections by name: the lora scope and the tensor-parallel split
    # (zojax.layout); each family declares its own.
    projections: ClassVar[Projections]

    def __init__(self, config, *, dtype=jnp.float32, param_dtype=jnp.float32):
        self.config = config
        self.dtype = dtype
        self.param_dtype = param_dtype

    @classmethod
    def apply(
        cls,
        config,
        params: dict,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        logits_positions: jax.Array | None = None,
        logits_tokens: jax.Array | None = None,
        cache: dict[str, jax.Array] | None = None,
        dtype=jnp.float32,
        unroll_layers: bool = False,
    ):
        """The forward as a pure function of a nested param dict (``nnx.to_pure_dict(state)``).

        What :meth:`__call__` runs, without NNX; a family module exports it as its ``apply``.
        Leaves of ``params`` may be arrays or :class:`~zojax.nn.Perturbed`.

        Args:
          config: the family's ``Config``.
          params: the nested param dict.
          input_ids: int ``(batch, seq)``.
          attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding (left or right).
            With ``cache`` it covers only the new tokens; earlier ones are remembered by the cache.
          positions: int ``(batch, seq)`` position ids in HF's convention (first real token 0).
            Default: counted from the mask as the family's HF model does (over cached + new
            tokens when a cache is given), so left padding starts real tokens at 0.
          logits_positions: int ``(batch, P)`` indices into ``seq``; if given, what follows the
            last layer (final norm, projections, LM head) runs only there and logits are
            ``(batch, P, vocab)``.
          logits_tokens: int ``(batch, seq or P, K)`` vocabulary ids; if given, only their logits
            are computed (the head's rows for those tokens) and logits are ``(batch, seq or P, K)``.
          cache: from :meth:`init_cache`; the new tokens are written at ``cache["index"]``
            (``index + seq`` must not exceed its ``max_len``: XLA would clamp the write).
          dtype: compute dtype.
          unroll_layers: run the layers as an unrolled loop instead of a ``lax.scan`` (same
            results; longer compiles; see ``model.unroll_layers`` in the run config).

        Returns:
          float32 logits ``(batch, seq or P, vocab)``; with ``cache``, ``(logits, new_cache)``.
        """
        parts = cls.parts
        slots = Slots.of(input_ids, attention_mask, cache)
        if positions is None:
            positions = slots.positions(parts.positions)
        h, context = parts.embed(config, params, input_ids, positions, dtype)
        h, new_kv = _scan_layers(parts, config, context, params["layers"], h, slots, cache, unroll_layers)
        if logits_positions is not None:
            # Per-token ops from here on: gather first so the head runs only where needed.
            h = jnp.take_along_axis(h, logits_positions[..., None].astype(jnp.int32), axis=1)
        # The final hidden state stays in float32 (vector_dtype) up to the head: a norm scale
        # perturbed by eps moves it by less than bfloat16's spacing, and the head of a few
        # given tokens (logits_tokens) costs nothing in float32.
        h = parts.final(config, params, h, vector_dtype(dtype))
        logits = lm_head(config, params, h, logits_tokens, dtype=dtype)
        if cache is None:
            return logits
        assert slots.index is not None  # set with a cache
        index = slots.index + input_ids.shape[1]
        return logits, {"k": new_kv[0], "v": new_kv[1], "mask": slots.key_mask, "index": index}

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

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None, **options):
        """Next-token logits: :meth:`apply` over this model's params, in its ``dtype``.

        ``options`` are :meth:`apply`'s keywords: ``positions``, ``logits_positions``,
        ``logits_tokens``, ``cache``, ``unroll_layers``.
        """
        # Variable values may be Perturbed pytrees, so read them through the pure-dict view.
        params = nnx.to_pure_dict(nnx.state(self, nnx.Param))
        return self.apply(self.config, params, input_ids, attention_mask, dtype=self.dtype, **options)
