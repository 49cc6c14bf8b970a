"""Evaluating full parameters on a split of a run's task."""

from __future__ import annotations

import math

from zojax import parallel, tasks
from zojax.run import reward as reward_task
from zojax.run.build import Run

__all__ = ["evaluate"]


def evaluate(run: Run, params, split: str = "test", limit: int | None = None) -> dict:
    """Accuracy (classification) or loss (LM) of full ``params`` on a split; for a reward task, the mean
    reward and accuracy of one completion per prompt (:func:`zojax.run.reward.evaluate_rewards`)."""
    bs = run.cfg.train.eval_batch_size
    if run.reward is not None:
        return reward_task.evaluate_rewards(run.reward, split, params, batch_size=bs, seed=run.cfg.train.seed, limit=limit)
    enc = run.split(split)
    n = len(enc) if limit is None else min(limit, len(enc))
    if run.mesh is not None:  # a no-op for weights already on the mesh
        params = parallel.shard(params, parallel.param_shardings(params, run.mesh, run.rules))
    totals: dict[str, float] = {}
    for start in range(0, n, bs):
        batch = tasks.make_batch(enc, range(start, min(start + bs, n)), batch_size=bs, seq_len=enc.seq_len)
        if run.mesh is not None:
            batch = parallel.replicate(batch, run.mesh)
        for k, v in run.metrics_fn(params, batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    if "tokens" in totals:  # the LM task (tasks.lm_metric_sums): loss per target token
        loss = totals["nll_sum"] / max(totals["tokens"], 1.0)
        return {"examples": n, "tokens": int(totals["tokens"]), "loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    count = max(totals.get("count", 0.0), 1.0)
    out = {"examples": int(count), "loss": totals.get("loss_sum", 0.0) / count}
    if "correct" in totals:
        out["accuracy"] = totals["correct"] / count
    return out
