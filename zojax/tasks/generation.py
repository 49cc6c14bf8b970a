"""Rewards on generated text as a zeroth-order objective: every member samples, inside the step.

:func:`reward_loss` is a ``loss_fn(params, batch, member)`` for :func:`zojax.scoring.score` (and so for
:func:`zojax.optim.make_step`): with the member's weights it samples ``samples`` completions of each prompt
of a :class:`PromptBatch` (prefill + a ``lax.scan`` of decode steps over a KV cache,
:func:`zojax.models.generate.decode`), scores them with a reward and returns ``-mean reward``. The scorer
vmaps it over members and signs, so the whole population x prompts x samples is one batch of decode steps
in the one compiled program; on the adapter path every member's low-rank perturbation shares the base
GEMM, as in batched inference.

Keys. Completion ``j`` of the prompt with example index ``i`` is sampled with
``fold_in(run key, tag, step, member, i, j)``: independent across members, prompts and steps, shared by a
member's two signs (common random numbers, which cancel sampling noise in ``L+ - L-``), and a pure function
of the seed log's entries, so a run replays bitwise.

Rewards. A *token reward* ``(completions (N, new) int32, index (N,) int32) -> (N,) float32`` is ``jnp`` and
runs inside the program (:func:`answer_token_reward`). A *text reward* ``reward(text, example) -> float``
(:mod:`zojax.tasks.rewards`) runs on the host through :func:`host_reward`: one ``jax.pure_callback`` per
step for the whole population (``vmap_method="expand_dims"``), which costs a device-to-host copy of the
generated ids, a ``tokenizer.decode`` and a Python call per completion, and is a synchronisation point that
XLA cannot overlap with the decode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax.models.generate import cut_at_eos, decode, left_pad
from zojax.scoring import Member
from zojax.tasks.data import batch_indices

__all__ = [
    "EncodedPrompts",
    "PromptBatch",
    "Sampling",
    "TokenReward",
    "answer_token_reward",
    "completion_keys",
    "encode_prompts",
    "generate_population",
    "host_reward",
    "prompt_batch",
    "reward_loss",
    "reward_sums",
    "train_prompt_batches",
]

TokenReward = Callable[[jax.Array, jax.Array], jax.Array]

# Separates sampling keys from the direction keys drawn from the same run key.
_SAMPLING_TAG = 0x5A3D


class PromptBatch(NamedTuple):
    """Left-padded prompts ``ids``/``mask`` ``(B, T)`` and their example indices ``example`` ``(B,)``."""

    ids: Any
    mask: Any
    example: Any


@dataclasses.dataclass(frozen=True)
class EncodedPrompts:
    """A split's prompts tokenized and left-padded to one length ``T`` (every batch has the same shape)."""

    ids: np.ndarray  # (N, T)
    mask: np.ndarray  # (N, T)
    examples: list[dict]
    offset: int = 0  # example ``i`` of this split is number ``offset + i`` of the reward's table (all splits)

    def __len__(self) -> int:
        return len(self.examples)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How completions are drawn: ``samples`` per prompt, ``max_new_tokens`` each, greedy at temperature 0."""

    samples: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    eos: tuple[int, ...] = ()
    pad: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def encode_prompts(examples: Sequence[dict], tokenizer, *, pad: int, chat: bool = False, max_length: int = 512,
                   bucket: int = 16, offset: int = 0) -> EncodedPrompts:
    """Tokenize each example's ``prompt`` (through the tokenizer's chat template with ``chat``), keep its
    last ``max_length`` tokens, and left-pad them all to one length (a multiple of ``bucket``)."""
    texts = [e["prompt"] for e in examples]
    if chat:
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in texts]
    seqs = [list(tokenizer(t, add_special_tokens=not chat)["input_ids"])[-max_length:] or [pad] for t in texts]
    ids, mask = left_pad(seqs, pad, bucket)
    return EncodedPrompts(ids, mask, list(examples), offset)


def prompt_batch(enc: EncodedPrompts, indices) -> PromptBatch:
    """The prompts ``indices`` of a split; their ``example`` numbers are the reward table's (with the offset)."""
    indices = np.asarray(indices, np.int32)
    return PromptBatch(enc.ids[indices], enc.mask[indices], indices + np.int32(enc.offset))


def train_prompt_batches(enc: EncodedPrompts, seed: int, step: int, n: int, batch_size: int) -> PromptBatch:
    """The batches of steps ``step .. step + n - 1`` stacked on a leading axis: a pure function of
    ``(seed, step)`` (:func:`zojax.tasks.batch_indices`), so a resumed run reads the same prompts."""
    batches = [prompt_batch(enc, batch_indices(seed, s, batch_size, len(enc))) for s in range(step, step + n)]
    return PromptBatch(*(np.stack(x) for x in zip(*batches)))


def completion_keys(member: Member, index, samples: int) -> jax.Array:
    """Keys of the ``samples`` completions of each prompt, ``(B * samples,)`` (prompt-major)."""
    base = jax.random.fold_in(jax.random.fold_in(member.key, _SAMPLING_TAG), member.step)
    base = jax.random.fold_in(base, member.number)

    def prompt_keys(i):
        k = jax.random.fold_in(base, i)
        return jax.vmap(lambda j: jax.random.fold_in(k, j))(jnp.arange(samples))

    keys = jax.vmap(prompt_keys)(jnp.asarray(index))
    return keys.reshape((-1,) + keys.shape[2:])


def generate_population(graphdef, params, batch: PromptBatch, keys: jax.Array, sampling: Sampling) -> jax.Array:
    """Completions ``(B * samples, max_new_tokens)`` of ``batch`` with ``params`` (any leaf may be
    :class:`~zojax.nn.Perturbed`). Pure: the scorer vmaps it over the population."""
    model = nnx.merge(graphdef, params)
    ids = jnp.repeat(jnp.asarray(batch.ids), sampling.samples, axis=0)
    mask = jnp.repeat(jnp.asarray(batch.mask), sampling.samples, axis=0)
    cache = model.init_cache(ids.shape[0], ids.shape[1] + sampling.max_new_tokens)
    return decode(model, ids, mask, cache, keys, jnp.float32(max(sampling.temperature, 1e-6)),
                  max_new_tokens=sampling.max_new_tokens, eos=sampling.eos, pad=sampling.pad, top_k=sampling.top_k,
                  greedy=sampling.greedy)


def reward_loss(graphdef, sampling: Sampling, reward: TokenReward):
    """``loss_fn(params, batch, member) = -mean reward`` of the member's completions (see the module doc)."""

    def loss_fn(params, batch: PromptBatch, member: Member):
        keys = completion_keys(member, batch.example, sampling.samples)
        completions = generate_population(graphdef, params, batch, keys, sampling)
        index = jnp.repeat(jnp.asarray(batch.example), sampling.samples)
        return -jnp.mean(reward(completions, index).astype(jnp.float32))

    loss_fn.takes_member = True  # type: ignore[attr-defined]
    return loss_fn


def reward_sums(graphdef, sampling: Sampling, reward: TokenReward, threshold: float = 1.0):
    """``metrics(params, batch, member, real) -> {reward_sum, correct, count}`` over the completions of the
    first ``real`` prompts of a batch (correct: reward >= ``threshold``); summed over batches, for evaluation."""

    def metrics(params, batch: PromptBatch, member: Member, real):
        keys = completion_keys(member, batch.example, sampling.samples)
        completions = generate_population(graphdef, params, batch, keys, sampling)
        r = reward(completions, jnp.repeat(jnp.asarray(batch.example), sampling.samples)).astype(jnp.float32)
        counted = (jnp.arange(r.size) // sampling.samples < real).astype(jnp.float32)
        return {"reward_sum": jnp.sum(r * counted), "correct": jnp.sum((r >= threshold) * counted),
                "count": jnp.sum(counted)}

    return metrics


def host_reward(reward: Callable[[str, dict], float], examples: Sequence[dict], tokenizer, eos: tuple) -> TokenReward:
    """A text reward as a token reward: completions are decoded (cut after the first stop token) and
    scored on the host through one ``jax.pure_callback`` per call, for every member at once."""

    def on_host(completions, index):
        completions, index = np.asarray(completions), np.asarray(index)
        index = np.broadcast_to(index, completions.shape[:-1])
        flat, flat_index = completions.reshape(-1, completions.shape[-1]), index.reshape(-1)
        texts = tokenizer.batch_decode([cut_at_eos(row, eos) for row in flat], skip_special_tokens=True)
        out = [float(reward(text, examples[int(i)])) for text, i in zip(texts, flat_index)]
        return np.asarray(out, np.float32).reshape(completions.shape[:-1])

    def token_reward(completions, index):
        out = jax.ShapeDtypeStruct(completions.shape[:-1], jnp.float32)
        return jax.pure_callback(on_host, out, completions, index, vmap_method="expand_dims")

    return token_reward


# token classes of the bare-number parse (:func:`_number_parser`)
_OTHER, _SPACE, _MINUS, _DIGITS, _SPACED_DIGITS, _END = range(6)
# states: before the number, after its sign, in its digits, accepted (ended by a line end), rejected
_START, _SIGNED, _IN_DIGITS, _ACCEPT, _REJECT = range(5)
_NEXT_STATE = np.full((5, 6), _REJECT, np.int32)
_NEXT_STATE[_START, [_SPACE, _MINUS, _DIGITS, _SPACED_DIGITS]] = [_START, _SIGNED, _IN_DIGITS, _IN_DIGITS]
_NEXT_STATE[_SIGNED, [_DIGITS, _SPACED_DIGITS]] = _IN_DIGITS
_NEXT_STATE[_IN_DIGITS, [_DIGITS, _END]] = [_IN_DIGITS, _ACCEPT]
_NEXT_STATE[_ACCEPT, :] = _ACCEPT


def _number_parser(texts: Sequence[str], eos: Sequence[int]):
    """``parse(completions (N, new)) -> (bare (N,) bool, value (N,) float32)`` for a vocabulary whose token
    ``i`` reads ``texts[i]``: whether a completion is a bare integer (spaces, an optional ``-``, digits, then a
    line end, a stop token or the end of the completion) and its value. A finite automaton over token
    classes, so it runs in the program for any tokenizer (digits one per token, as in Llama's, or several,
    as in GPT-2's)."""
    kinds = np.full(len(texts), _OTHER, np.int32)
    digit_value, digit_scale = np.zeros(len(texts), np.float32), np.ones(len(texts), np.float32)
    for i, t in enumerate(texts):
        bare = t.strip()
        if i in eos or t.startswith("\n") or bare == ".":
            kinds[i] = _END
        elif bare.isascii() and bare.isdigit():
            kinds[i] = _SPACED_DIGITS if t[0].isspace() else _DIGITS
            digit_value[i], digit_scale[i] = float(bare), 10.0 ** len(bare)
        elif bare == "-":
            kinds[i] = _MINUS
        elif t and t.isspace():
            kinds[i] = _SPACE
    kind_of, value_of, scale_of, next_state = map(jnp.asarray, (kinds, digit_value, digit_scale, _NEXT_STATE))

    def parse(completions):
        def step(carry, token):
            state, value, sign = carry
            token = jnp.clip(token, 0, kind_of.shape[0] - 1)
            new = next_state[state, kind_of[token]]
            value = jnp.where(new == _IN_DIGITS, value * scale_of[token] + value_of[token], value)
            sign = jnp.where(new == _SIGNED, -1.0, sign)
            return (new, value, sign), None

        n = completions.shape[0]
        init = (jnp.full(n, _START, jnp.int32), jnp.zeros(n, jnp.float32), jnp.ones(n, jnp.float32))
        (state, value, sign), _ = jax.lax.scan(step, init, completions.T)
        return (state == _ACCEPT) | (state == _IN_DIGITS), sign * value

    return parse


def answer_token_reward(examples: Sequence[dict], tokenizer, *, key: str = "solution", bonus: float = 0.1,
                        eos: Sequence[int] = (), closeness: float = 0.0) -> TokenReward:
    """A ``jnp`` reward, inside the program, ``answer + bonus * format`` as the arithmetic task's host
    verifier scores a bare answer: answer is 1 when a completion is exactly the tokens of the example's
    ``solution`` (e.g. ``" 42"``) followed by a token that does not continue the number; format is 1 when
    the completion is a bare integer (:func:`_number_parser`; ``eos`` are stop tokens, which end it).
    ``closeness > 0`` adds ``closeness * 2^-|value - answer|`` to a wrong bare integer (examples with a
    numeric ``solution``): a denser signal for a population whose untrained answers are rarely exact."""
    answers = [list(tokenizer(e[key], add_special_tokens=False)["input_ids"]) for e in examples]
    width = max(map(len, answers)) + 1
    table = np.full((len(answers), width), -1, np.int32)
    for i, a in enumerate(answers):
        table[i, : len(a)] = a
    lengths = np.asarray([len(a) for a in answers], np.int32)
    vocab = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(vocab)])
    continues = np.asarray([t[:1].isdigit() for t in texts], bool)
    answer_ids, answer_len, digit_next = jnp.asarray(table), jnp.asarray(lengths), jnp.asarray(continues)
    parse = _number_parser(texts, tuple(int(t) for t in eos))
    if closeness:
        bad = next((e[key] for e in examples if not e[key].strip().lstrip("-").isdigit()), None)
        if bad is not None:
            raise ValueError(f"closeness credit needs integer solutions; one is {bad!r}")
    targets = jnp.asarray([float(e[key]) if closeness else 0.0 for e in examples], jnp.float32)

    def token_reward(completions, index):
        want, n = answer_ids[index], answer_len[index]  # (N, width), (N,)
        cols = jnp.arange(width)
        got = completions[:, :width] if completions.shape[1] >= width else jnp.pad(
            completions, ((0, 0), (0, width - completions.shape[1])), constant_values=-1)
        same = jnp.all(jnp.where(cols[None, :] < n[:, None], got == want, True), axis=1)
        nxt = jnp.take_along_axis(got, n[:, None], axis=1)[:, 0]
        exact = same & ((nxt < 0) | ~digit_next[jnp.clip(nxt, 0, vocab - 1)])
        bare, value = parse(completions)
        near = closeness * jnp.exp2(-jnp.abs(value - targets[index])) if closeness else 0.0
        return jnp.where(exact, 1.0 + bonus, jnp.where(bare, bonus + near, 0.0)).astype(jnp.float32)

    return token_reward
