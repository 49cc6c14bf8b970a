"""Losses and metrics on a :class:`~zojax.tasks.Batch`, for any model behind the ``apply`` contract.

``apply(input_ids (N, T) int32, attention_mask (N, T) int32, positions (N, P) int32) -> logits (N, P, V)``
computes the LM head only at ``positions`` (N = B*S: the batch's sequences flattened). An ``apply`` that also
takes an optional ``tokens`` (``(N, P, K)`` vocabulary ids) and then returns only their logits ``(N, P, K)`` lets the
classification objectives skip the rest of the vocabulary (see :func:`option_scores`). Everything here is
pure ``jnp`` on static shapes: jit it, vmap it over a population of parameters, scan it over stacked
batches.

Zeroth-order training only needs a loss *value*, so non-differentiable objectives are as usable as
cross-entropy: ``get_objective("error_rate")`` (1 - accuracy), ``"margin"``, or any function of the option
log-probs. Note a piecewise-constant objective (error rate) often gives L+ == L- for small eps.

>>> import jax.numpy as jnp, numpy as np
>>> from zojax.tasks.batching import _ToyTokenizer, encode_task, make_batch
>>> enc = encode_task([{"sentence": "fine", "label": 1}], "sst2", _ToyTokenizer())
>>> batch = make_batch(enc, [0])
>>> V = 8
>>> def apply(ids, mask, pos):  # a "model" that always prefers token 5 ("great")
...     return jnp.zeros(pos.shape + (V,)).at[..., 5].set(2.0)
>>> np.asarray(option_logprobs(apply, batch), float).round(3).tolist()
[[-2.666, -0.666]]
>>> float(accuracy(apply, batch)), float(get_objective("error_rate")(apply, batch))
(1.0, 0.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from zojax.tasks.batching import Batch

__all__ = [
    "OBJECTIVES",
    "Apply",
    "accuracy",
    "classification_loss",
    "error_rate",
    "get_objective",
    "lm_loss",
    "lm_metric_sums",
    "target_tokens",
    "margin_loss",
    "metric_sums",
    "option_logprobs",
    "option_nll",
    "option_scores",
    "predictions",
    "register_objective",
    "token_logprobs",
]

Apply = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

# Missing options get this log-likelihood: exp() underflows to 0, and unlike -inf it keeps
# arithmetic (and gradients, for first-order baselines) free of NaN.
_MISSING = -1e9


def _wmean(x, w):
    w = jnp.asarray(w, jnp.float32)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1e-9)


def token_logprobs(apply: Apply, batch: Batch) -> jax.Array:
    """Log-probabilities of every target, ``(B, S, P, K)`` float32 (0 where ``target_mask`` is 0).

    Computed as ``logit[target] - logsumexp(logits)`` so no ``(.., V)`` log-softmax is materialized.
    """
    ids = jnp.asarray(batch.input_ids)
    B, S, T = ids.shape
    P = batch.positions.shape[-1]
    logits = apply(
        ids.reshape(B * S, T),
        jnp.asarray(batch.attention_mask).reshape(B * S, T),
        jnp.asarray(batch.positions).reshape(B * S, P),
    )
    logits = logits.reshape(B, S, P, logits.shape[-1]).astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    lp = jnp.take_along_axis(logits, jnp.asarray(batch.targets), axis=-1) - lse
    return jnp.where(jnp.asarray(batch.target_mask) > 0, lp, 0.0)


def option_logprobs(apply: Apply, batch: Batch, *, length_norm: bool | None = None) -> jax.Array:
    """Log-likelihood of every option, ``(B, O)``: the sum of its token log-probs, or their mean when
    ``length_norm`` (default: the batch's, i.e. the encoder's; MeZO averages). Missing options: -1e9.
    """
    tok = token_logprobs(apply, batch)
    tmask = jnp.asarray(batch.target_mask)
    s = tok.sum(axis=2)  # (B, S, K)
    if batch.length_norm if length_norm is None else length_norm:
        s = s / jnp.maximum(tmask.sum(axis=2), 1.0)
    B = s.shape[0]
    return jnp.where(jnp.asarray(batch.option_mask), s.reshape(B, -1), _MISSING)


def _takes_tokens(apply: Apply) -> bool:
    try:
        return "tokens" in inspect.signature(apply).parameters
    except (TypeError, ValueError):  # builtins and some wrapped callables have no signature
        return False


def option_scores(apply: Apply, batch: Batch) -> jax.Array:
    """Option log-likelihoods up to a per-example constant, ``(B, O)``: all that cross-entropy over the
    options, argmax and margins depend on.

    When every example is one sequence read at one position (single-token options, the ``"last"``
    layout) and ``apply`` takes ``tokens``, only the options' logits are computed: their log-probs
    differ from them by the example's log-sum-exp over the vocabulary, which these objectives cancel.
    That skips the vocabulary-wide head (for dense ZO over a tied embedding, its whole direction).
    Otherwise this is :func:`option_logprobs`.
    """
    ids = jnp.asarray(batch.input_ids)
    B, S, T = ids.shape
    P = batch.positions.shape[-1]
    if S != 1 or P != 1 or not _takes_tokens(apply):
        return option_logprobs(apply, batch)
    targets = jnp.asarray(batch.targets)  # (B, 1, 1, O)
    apply_tokens: Callable[..., jax.Array] = apply  # Apply plus tokens= (checked by _takes_tokens)
    logits = apply_tokens(
        ids.reshape(B, T),
        jnp.asarray(batch.attention_mask).reshape(B, T),
        jnp.asarray(batch.positions).reshape(B, 1),
        tokens=targets.reshape(B, 1, -1),
    )
    scores = logits.reshape(B, -1).astype(jnp.float32)
    present = jnp.asarray(batch.option_mask) & (jnp.asarray(batch.target_mask).reshape(B, -1) > 0)
    return jnp.where(present, scores, _MISSING)


def _ce(lp, batch):
    lse = jax.nn.logsumexp(lp, axis=-1)
    gold = jnp.take_along_axis(lp, jnp.asarray(batch.labels)[:, None], axis=-1)[:, 0]
    return lse - gold


def classification_loss(apply: Apply, batch: Batch) -> jax.Array:
    """Cross-entropy of the label over the options' log-likelihoods (MeZO's "train as classification"),
    averaged over real examples (``weights``)."""
    return _wmean(_ce(option_scores(apply, batch), batch), batch.weights)


def predictions(apply: Apply, batch: Batch) -> jax.Array:
    """The most likely option of each example, ``(B,)`` int32."""
    return jnp.argmax(option_scores(apply, batch), axis=-1).astype(jnp.int32)


def accuracy(apply: Apply, batch: Batch) -> jax.Array:
    """Fraction of real examples whose most likely option is the label."""
    return _wmean(_correct(option_scores(apply, batch), batch), batch.weights)


def _correct(lp, batch):
    return (jnp.argmax(lp, axis=-1) == jnp.asarray(batch.labels)).astype(jnp.float32)


def error_rate(apply: Apply, batch: Batch) -> jax.Array:
    """``1 - accuracy``: a non-differentiable objective for zeroth-order training."""
    return 1.0 - accuracy(apply, batch)


def _margin(lp, batch):
    labels = jnp.asarray(batch.labels)
    gold = jnp.take_along_axis(lp, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jnp.arange(lp.shape[-1])[None, :] == labels[:, None], _MISSING, lp)
    return jnp.max(others, axis=-1) - gold


def margin_loss(apply: Apply, batch: Batch) -> jax.Array:
    """Mean of ``max_wrong - correct`` option log-likelihood (negative margin; lower is better)."""
    return _wmean(_margin(option_scores(apply, batch), batch), batch.weights)


def option_nll(apply: Apply, batch: Batch) -> jax.Array:
    """Negative log-likelihood of the correct option only (MeZO without ``--train_as_classification``:
    the LM loss on the gold continuation; per token when ``length_norm``)."""
    lp = option_logprobs(apply, batch)
    gold = jnp.take_along_axis(lp, jnp.asarray(batch.labels)[:, None], axis=-1)[:, 0]
    return _wmean(-gold, batch.weights)


def lm_loss(apply: Apply, batch: Batch) -> jax.Array:
    """Mean next-token negative log-likelihood over all targets of real examples (the causal-LM task:
    batches from :func:`~zojax.tasks.encode_lm`, whose positions are every token but the last)."""
    tok = token_logprobs(apply, batch)
    m = jnp.asarray(batch.target_mask) * jnp.asarray(batch.weights, jnp.float32)[:, None, None, None]
    return -jnp.sum(tok * m) / jnp.maximum(jnp.sum(m), 1.0)


def target_tokens(batch: Batch) -> jax.Array:
    """The real target tokens of a batch: what :func:`lm_loss` is a mean over, so the weight of each
    micro-batch of a split batch (its micro-batches then average to the whole batch's loss)."""
    return jnp.sum(jnp.asarray(batch.target_mask) * jnp.asarray(batch.weights, jnp.float32)[:, None, None, None])


def metric_sums(apply: Apply, batch: Batch) -> dict[str, jax.Array]:
    """Sums for evaluation over many batches: ``loss_sum`` (cross-entropy), ``correct``, ``count``.
    Accuracy = correct / count, loss = loss_sum / count."""
    lp = option_scores(apply, batch)
    w = jnp.asarray(batch.weights, jnp.float32)
    return {
        "loss_sum": jnp.sum(_ce(lp, batch) * w),
        "correct": jnp.sum(_correct(lp, batch) * w),
        "count": jnp.sum(w),
    }


def lm_metric_sums(apply: Apply, batch: Batch) -> dict[str, jax.Array]:
    """Sums for LM evaluation: ``nll_sum`` over target tokens and ``tokens`` (perplexity =
    exp(nll_sum / tokens))."""
    tok = token_logprobs(apply, batch)
    m = jnp.asarray(batch.target_mask) * jnp.asarray(batch.weights, jnp.float32)[:, None, None, None]
    return {"nll_sum": -jnp.sum(tok * m), "tokens": jnp.sum(m)}


def _from_scores(fn: Callable[[jax.Array, Batch], Any]) -> Callable[[Apply, Batch], jax.Array]:
    def objective(apply, batch):
        return jnp.asarray(fn(option_logprobs(apply, batch), batch), jnp.float32)

    objective.__name__ = getattr(fn, "__name__", "objective")
    objective.__doc__ = getattr(fn, "__doc__", None)
    return objective


OBJECTIVES: dict[str, Callable[[Apply, Batch], jax.Array]] = {
    "ce": classification_loss,
    "error_rate": error_rate,
    "margin": margin_loss,
    "nll": option_nll,
    "lm": lm_loss,
}


def register_objective(name: str, fn: Callable, *, on: str = "logprobs") -> None:
    """Add an objective to :data:`OBJECTIVES` (see :func:`get_objective` for ``on``)."""
    OBJECTIVES[name] = get_objective(fn, on=on)


def get_objective(objective: str | Callable, *, on: str = "logprobs") -> Callable[[Apply, Batch], jax.Array]:
    """A loss ``(apply, batch) -> scalar`` (lower is better).

    ``objective`` is a name in :data:`OBJECTIVES` (``"ce"``, ``"error_rate"``, ``"margin"``, ``"nll"``,
    ``"lm"``) or a callable. With ``on="logprobs"`` (default) the callable receives
    ``(option_logprobs (B, O), batch)``; with ``on="apply"`` it is used as is, ``(apply, batch)``.
    To maximize a reward, return its negative. Average with ``batch.weights`` to ignore the padding rows
    of a short evaluation batch (training batches have none).

    >>> import jax.numpy as jnp
    >>> from zojax.tasks.batching import _ToyTokenizer, encode_task, make_batch
    >>> batch = make_batch(encode_task([{"sentence": "x", "label": 0}], "sst2", _ToyTokenizer()), [0])
    >>> apply = lambda ids, mask, pos: jnp.zeros(pos.shape + (6,))
    >>> float(get_objective(lambda lp, b: -lp.max(-1).mean())(apply, batch))  # uniform: log 6
    1.7917594909667969
    """
    if isinstance(objective, str):
        if objective not in OBJECTIVES:
            raise KeyError(f"unknown objective {objective!r}; known: {sorted(OBJECTIVES)}")
        return OBJECTIVES[objective]
    if not callable(objective):
        raise TypeError(f"objective must be a name or a callable, got {objective!r}")
    if on == "logprobs":
        return _from_scores(objective)
    if on == "apply":
        return objective
    raise ValueError(f"on must be 'logprobs' or 'apply', got {on!r}")
