"""zojax.tasks.objectives: losses and metrics against a hand computation, from full or option-token logits."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax import tasks as T

from .toy_lm import SST2, _toy_apply, toy_apply


def _reward(lp, batch):
    """A user objective on option log-probs: minus the mean gold-option probability."""
    return -jnp.mean(jax.nn.softmax(lp)[jnp.arange(lp.shape[0]), batch.labels])


@functools.partial(jax.jit, static_argnums=0)
def _all_metrics(apply, b):
    # one compile for every objective (XLA shares the model call between them)
    return {
        "lp": T.option_logprobs(apply, b),
        "ce": T.classification_loss(apply, b),
        "acc": T.accuracy(apply, b),
        "pred": T.predictions(apply, b),
        **{name: T.get_objective(name)(apply, b) for name in ("ce", "error_rate", "margin", "nll")},
        "reward": T.get_objective(_reward)(apply, b),
        "sums": T.metric_sums(apply, b),
    }


def test_losses_and_metrics_match_hand_computation(tok):
    enc = T.encode_task(SST2, "sst2", tok)
    b = T.make_batch(enc, range(5), batch_size=8)  # 3 padding rows with weight 0
    assert b.weights.tolist() == [1.0] * 5 + [0.0] * 3
    m = jax.tree.map(np.asarray, _all_metrics(toy_apply, b))
    lp = m["lp"][:5]
    y = np.array([e["label"] for e in SST2])
    ce = np.mean(np.logaddexp(lp[:, 0], lp[:, 1]) - lp[np.arange(5), y])
    acc = np.mean(lp.argmax(1) == y)
    assert m["ce"] == pytest.approx(ce, abs=1e-5) and m["ce"] == m["ce"]
    assert m["acc"] == pytest.approx(acc) and m["error_rate"] == pytest.approx(1 - acc)
    assert m["pred"][:5].tolist() == lp.argmax(1).tolist()
    margin = np.mean(lp[np.arange(5), 1 - y] - lp[np.arange(5), y])
    assert m["margin"] == pytest.approx(margin, abs=1e-5)
    assert m["nll"] == pytest.approx(-np.mean(lp[np.arange(5), y]), abs=1e-5)
    sums = m["sums"]
    assert sums["count"] == 5 and sums["correct"] == pytest.approx(acc * 5)
    assert sums["loss_sum"] == pytest.approx(ce * 5, abs=1e-4)
    # the user reward is a plain function: its mean runs over all 8 rows (padding rows repeat example 0)
    p = np.exp(lp - np.logaddexp(lp[:, :1], lp[:, 1:]))
    want = -np.mean(np.concatenate([p[np.arange(5), y], [p[0, y[0]]] * 3]))
    assert m["reward"] == pytest.approx(want, abs=1e-5)
    T.register_objective("gold_prob", _reward)
    assert T.OBJECTIVES.pop("gold_prob").__name__ == "_reward"
    with pytest.raises(KeyError, match="known"):
        T.get_objective("nope")
    with pytest.raises(TypeError):
        T.get_objective(3)


def test_option_token_logits_give_the_same_losses_and_metrics(tok):
    """An apply that takes ``tokens`` computes only the options' logits (single-token options, one
    sequence per example): every classification objective and metric is unchanged."""
    traced_with_tokens = []

    def apply_tokens(ids, mask, pos, tokens=None):
        logits = _toy_apply(ids, mask, pos)
        if tokens is None:  # the exact log-probs (option_logprobs, nll) still need the whole vocabulary
            return logits
        traced_with_tokens.append(tokens.shape)
        return jnp.take_along_axis(logits, tokens, axis=-1)

    b = T.make_batch(T.encode_task(SST2, "sst2", tok), range(5), batch_size=8)
    want = jax.tree.map(np.asarray, jax.jit(_all_metrics, static_argnums=0)(toy_apply, b))
    got = jax.tree.map(np.asarray, jax.jit(_all_metrics, static_argnums=0)(apply_tokens, b))
    assert traced_with_tokens and traced_with_tokens[0] == (8, 1, 2)
    for key in ("ce", "acc", "pred", "error_rate", "margin", "nll", "reward", "sums"):
        for w, g in zip(jax.tree.leaves(want[key]), jax.tree.leaves(got[key])):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=key)
    scores = np.asarray(T.option_scores(apply_tokens, b))  # log-probs up to a per-example constant
    shift = scores - want["lp"]
    np.testing.assert_allclose(shift, shift[:, :1].repeat(2, 1), atol=1e-4)
