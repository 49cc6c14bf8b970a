"""Generation with a KV cache, greedy or sampled: one jitted program (prefill + ``lax.scan`` of
decode steps).

Works with any family model that follows the family interface (``init_cache`` and a
``cache=`` argument to ``__call__``). Prompts are left-padded into one batch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax.errors import GenerateError

__all__ = ["generate", "decode", "left_pad", "cut_at_eos", "stop_tokens", "GenerateError", "check_sampling"]

# A bound on prompt + new tokens for a model that states no max_position_embeddings: the KV cache is
# allocated up front, so an absurd --max-new-tokens would be an allocation of hundreds of GB.
MAX_TOKENS = 1 << 16


def check_sampling(max_new_tokens: int, temperature: float, top_k: int) -> None:
    """Refuse generation options that mean nothing, before any model is loaded."""
    if not (isinstance(max_new_tokens, int) and 1 <= max_new_tokens <= MAX_TOKENS):
        raise GenerateError(f"max_new_tokens={max_new_tokens}: allowed 1 .. {MAX_TOKENS}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise GenerateError(f"temperature={temperature}: allowed a finite number >= 0 (0: greedy)")
    if top_k < 0:
        raise GenerateError(f"top_k={top_k}: allowed 0 (every token) or a count of tokens")


def decode(model, ids, mask, cache, row_keys, temperature, *, max_new_tokens: int, eos: tuple = (), pad: int = 0,
           top_k: int = 0, greedy: bool = True) -> jax.Array:
    """New tokens ``(B, max_new_tokens)`` for left-padded prompts ``ids``/``mask`` ``(B, T)``: prefill, then a
    ``lax.scan`` of one-token steps over the KV ``cache`` (``model.init_cache(B, >= T + max_new_tokens)``).

    Pure and traceable: ``model`` is a family model (its weights may be :class:`zojax.nn.Perturbed`), and under
    ``vmap`` over a population the decode steps of every member run as one batch. Row ``b``'s token ``t`` is
    drawn with ``fold_in(row_keys[b], t)``, so a row's sample depends on its own key only (not on the batch it
    sits in). After a row emits a token of ``eos`` it emits ``pad``.
    """
    B, T = ids.shape
    eos_ids = jnp.asarray(eos if eos else (-1,), jnp.int32)

    def pick(logits, t):
        if greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = logits.astype(jnp.float32) / temperature
        if top_k:
            kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
            logits = jnp.where(logits < kth, -jnp.inf, logits)
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, t)
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)

    last = jnp.full((B, 1), T - 1, jnp.int32)  # left padding: every prompt ends at T - 1
    logits, cache = model(ids, mask, logits_positions=last, cache=cache)
    tok = pick(logits[:, 0], 0)
    done = jnp.isin(tok, eos_ids)

    def step(carry, t):
        tok, done, cache = carry
        logits, cache = model(tok[:, None], jnp.ones((B, 1), jnp.int32), cache=cache)
        nxt = jnp.where(done, pad, pick(logits[:, 0], t))
        return (nxt, done | jnp.isin(nxt, eos_ids), cache), nxt

    _, rest = jax.lax.scan(step, (tok, done, cache), jnp.arange(1, max_new_tokens))
    return jnp.concatenate([tok[:, None], rest.T], axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "eos", "pad", "top_k", "greedy"))
def _decode(graphdef, state, ids, mask, cache, key, temperature, *, max_new_tokens, eos, pad, top_k, greedy):
    row_keys = jax.random.split(key, ids.shape[0])
    return decode(nnx.merge(graphdef, state), ids, mask, cache, row_keys, temperature, max_new_tokens=max_new_tokens,
                  eos=eos, pad=pad, top_k=top_k, greedy=greedy)


def left_pad(seqs: Sequence[Sequence[int]], pad: int, bucket: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists as one left-padded batch ``(ids, mask)`` of shape ``(B, T)``, ``T`` a multiple of ``bucket``."""
    T = -(-max(map(len, seqs)) // bucket) * bucket
    ids = np.full((len(seqs), T), pad, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        ids[i, T - len(s) :] = s
        mask[i, T - len(s) :] = 1
    return ids, mask


def cut_at_eos(row, eos: tuple) -> list[int]:
    """A row of new tokens up to and including its first stop token."""
    row = [int(t) for t in row]
    for j, t in enumerate(row):
        if t in eos:
            return row[: j + 1]
    return row


def stop_tokens(model, tokenizer, eos_token_id=None, pad_token_id=None) -> tuple[tuple[int, ...], int]:
    """``(eos ids, pad id)``: given, else the tokenizer's, else the model config's (pad falls back to eos, then 0)."""
    config = model.config
    if eos_token_id is None:
        eos_token_id = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
        if eos_token_id is None:
            eos_token_id = getattr(config, "eos_token_id", None)
    eos = tuple(int(e) for e in _as_list(eos_token_id)) if eos_token_id is not None else ()
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        if pad_token_id is None:
            pad_token_id = getattr(config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos[0] if eos else 0
    return eos, int(pad_token_id)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def generate(
    model,
    tokenizer,
    prompts: str | Sequence[str] | Sequence[Sequence[int]] | np.ndarray,
    *,
    max_new_tokens: int = 32,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    bucket: int = 16,
    skip_special_tokens: bool = True,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
):
    """Continuation of one prompt or a batch of prompts: greedy, or sampled with ``temperature > 0``.

    Args:
      model: a zojax family model (e.g. from :func:`zojax.models.from_pretrained`).
      tokenizer: an HF tokenizer, or None when ``prompts`` are token ids.
      prompts: a string, a list of strings, or (with or without a tokenizer) a list of
        token-id lists / an int array ``(batch, len)`` (all tokens real).
      max_new_tokens: tokens generated per prompt.
      eos_token_id: stop token(s); default from the tokenizer, then the model config. After a
        row emits one, it emits ``pad_token_id``.
      bucket: prompt length is left-padded up to a multiple of this, to limit recompiles.
      temperature: 0 picks the likeliest token; above 0 samples from the softmax of
        ``logits / temperature`` (one key per prompt from ``seed``, folded with the token's index).
      top_k: when sampling, only among the ``top_k`` likeliest tokens (0: all).

    Returns:
      For string prompts with a tokenizer: the decoded continuation(s) (str or list of str,
      matching ``prompts``); otherwise an int array ``(batch, max_new_tokens)`` of new tokens.

    >>> model, _, tok = zojax.models.from_pretrained("smollm2-135m")  # doctest: +SKIP
    >>> "Paris" in generate(model, tok, "The capital of France is", max_new_tokens=8)  # doctest: +SKIP
    True
    """
    check_sampling(max_new_tokens, temperature, top_k)
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and top_k > vocab:
        raise GenerateError(f"top_k={top_k} exceeds the vocabulary of {vocab} tokens")
    single = isinstance(prompts, str)
    texts = single or (
        isinstance(prompts, (list, tuple)) and len(prompts) > 0 and isinstance(prompts[0], str)
    )
    if texts:
        if tokenizer is None:
            raise GenerateError("string prompts need a tokenizer")
        seqs = [list(tokenizer(p)["input_ids"]) for p in _as_list(prompts)]
    else:
        if isinstance(prompts, (np.ndarray, jax.Array)):
            prompts = np.atleast_2d(np.asarray(prompts)).tolist()
        elif len(prompts) > 0 and np.ndim(prompts[0]) == 0:  # one prompt as a flat id list
            prompts = [prompts]  # type: ignore[assignment]  # flat ids: accepted, though not in the annotation
        seqs = [[int(t) for t in s] for s in prompts]
    if not seqs or any(len(s) == 0 for s in seqs):
        raise GenerateError("every prompt needs at least one token (an empty prompt has none)")
    limit = getattr(model.config, "max_position_embeddings", None) or MAX_TOKENS
    longest = max(map(len, seqs))
    if longest + max_new_tokens > limit:
        raise GenerateError(
            f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's {limit} positions; "
            f"allowed max_new_tokens <= {max(limit - longest, 0)}"
        )

    eos, pad_token_id = stop_tokens(model, tokenizer, eos_token_id, pad_token_id)
    B = len(seqs)
    ids, mask = left_pad(seqs, pad_token_id, bucket)
    T = ids.shape[1]

    graphdef, state = nnx.split(model)
    cache = model.init_cache(B, T + max_new_tokens)
    out = _decode(
        graphdef,
        state,
        jnp.asarray(ids),
        jnp.asarray(mask),
        cache,
        jax.random.PRNGKey(seed),
        jnp.float32(max(temperature, 1e-6)),
        max_new_tokens=max_new_tokens,
        eos=eos,
        pad=int(pad_token_id),
        top_k=int(top_k),
        greedy=temperature == 0,
    )
    out = np.asarray(out)
    if not texts:
        return out
    decoded = [tokenizer.decode(cut_at_eos(row, eos), skip_special_tokens=skip_special_tokens) for row in out]
    return decoded[0] if single else decoded
