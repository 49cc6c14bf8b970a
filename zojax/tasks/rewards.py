"""Tasks scored by a reward on generated text: Countdown, arithmetic, and bring-your-own prompts.

Every task here ships offline: its examples are generated from a seed (no download), split into
train / dev / test, and checked by a verifier. An example is a dict with at least ``"prompt"``;
a reward is ``reward(completion_text, example) -> float`` (higher is better), run on the host.
Shipped rewards follow the ES-at-scale paper's Countdown reward: ``answer + 0.1 * format``, so a
correct answer scores at least 1 and accuracy is the fraction of completions scoring >= 1.

Your own task: a JSONL file of records with a ``"prompt"`` (and whatever fields your reward reads)
and a reward named ``"module:function"`` (see :func:`resolve_reward`).

>>> ex = countdown_examples(1, seed=0)[0]
>>> sorted(ex) == ["numbers", "prompt", "solution", "target"]
True
>>> countdown_reward("...</think>\\n<answer>" + ex["solution"] + "</answer>", ex) >= 1.0
True
>>> arithmetic_reward(" 12", {"answer": 12}), arithmetic_reward("3 + 9 = 12.", {"answer": 12})
(1.1, 1.0)
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from zojax.errors import DataError
from zojax.tasks.data import read_records, sample_indices

__all__ = [
    "REWARD_TASKS",
    "Reward",
    "RewardSplits",
    "RewardTask",
    "arithmetic_examples",
    "arithmetic_reward",
    "countdown_examples",
    "countdown_reward",
    "evaluate_expression",
    "load_reward_task",
    "resolve_reward",
    "with_demonstrations",
]

Reward = Callable[[str, dict], float]

_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b != 0 else None,
}
_TOKEN = re.compile(r"\s*(\d+|[-+*/()])")


def evaluate_expression(text: str) -> Fraction | None:
    """The exact value of an arithmetic expression of integers, ``+ - * /`` and parentheses, or None
    if it is not one (or divides by zero). A small recursive-descent parser: nothing is ``eval``-ed.

    >>> evaluate_expression("(3 + 5) * 2 / 4"), evaluate_expression("1 / (2 - 2)"), evaluate_expression("2 **")
    (Fraction(4, 1), None, None)
    """
    tokens: list[str] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        tokens.append(m.group(1))
        pos = m.end()
    at = 0

    def peek():
        return tokens[at] if at < len(tokens) else None

    def take():
        nonlocal at
        at += 1
        return tokens[at - 1]

    def atom():
        t = peek()
        if t is None:
            return None
        if t == "(":
            take()
            v = expr()
            return v if v is not None and peek() == ")" and take() else None
        if t == "-":  # unary minus
            take()
            v = atom()
            return None if v is None else -v
        return Fraction(int(take())) if t.isdigit() else None

    def term():
        v = atom()
        while v is not None and peek() in ("*", "/"):
            op = take()
            w = atom()
            v = None if w is None else _OPS[op](v, w)
        return v

    def expr():
        v = term()
        while v is not None and peek() in ("+", "-"):
            op = take()
            w = term()
            v = None if w is None else _OPS[op](v, w)
        return v

    value = expr()
    return value if value is not None and at == len(tokens) else None


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _countdown_format(text: str) -> float:
    """The paper's format score of ``<think>`` + completion: 1 for ``<think>..</think>\\n<answer>..</answer>``
    exactly, else 0.1 for a think block plus 0.5 for an answer block."""
    full = "<think>" + text.strip()
    if re.fullmatch(r"<think>.*?</think>\n<answer>.*?</answer>", full, re.DOTALL):
        return 1.0
    return 0.1 * bool(re.search(r"<think>.*?</think>", full, re.DOTALL)) + 0.5 * bool(_ANSWER.search(full))


def countdown_reward(text: str, example: dict) -> float:
    """``answer + 0.1 * format``: answer is 1 when the last ``<answer>`` expression uses each of the
    example's numbers exactly once and equals its target (exactly, in fractions)."""
    answers = _ANSWER.findall(text)
    correct = 0.0
    if answers:
        expr = answers[-1].strip()
        used = sorted(int(n) for n in re.findall(r"\d+", expr))
        value = evaluate_expression(expr) if re.fullmatch(r"[0-9+\-*/() ]+", expr) else None
        correct = float(used == sorted(example["numbers"]) and value is not None and value == example["target"])
    return correct + 0.1 * _countdown_format(text)


def arithmetic_reward(text: str, example: dict) -> float:
    """``answer + 0.1 * format`` on the first non-empty line: answer is 1 when its last integer is the
    example's ``answer``; format is 1 when that line is the bare integer."""
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    numbers = re.findall(r"-?\d+", line)
    correct = float(bool(numbers) and int(numbers[-1]) == int(example["answer"]))
    return correct + 0.1 * float(bool(re.fullmatch(r"-?\d+\.?", line)))


def _countdown_prompt(numbers: Sequence[int], target: int) -> str:
    return (
        f"Using the numbers {list(numbers)}, create an equation that equals {target}. You can use basic arithmetic "
        "operations (+, -, *, /) and each number must be used exactly once. Show your work in <think> </think> tags "
        "and return the final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.\n"
        "Assistant: Let me solve this step by step.\n<think>"
    )


def countdown_examples(n: int, seed: int, *, sizes: Sequence[int] = (3, 4), max_number: int = 99,
                       max_target: int = 999) -> list[dict]:
    """``n`` Countdown puzzles from ``seed``: 3 or 4 numbers in ``1..max_number`` and a positive integer
    target that a random expression over all of them reaches (its ``solution``), so each is solvable."""
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    while len(out) < n:
        numbers = [int(x) for x in rng.integers(1, max_number + 1, size=int(rng.choice(sizes)))]
        terms = [(Fraction(x), str(x)) for x in numbers]
        while len(terms) > 1:  # combine two random terms with a random operator until one is left
            i, j = rng.choice(len(terms), size=2, replace=False)
            (a, sa), (b, sb) = terms[i], terms[j]
            op = str(rng.choice(list(_OPS)))
            value = _OPS[op](a, b)
            if value is None:
                break
            terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [(value, f"({sa} {op} {sb})")]
        value, solution = terms[0]
        if len(terms) == 1 and value.denominator == 1 and 0 < value <= max_target:
            target = int(value)
            out.append({"prompt": _countdown_prompt(numbers, target), "numbers": numbers, "target": target,
                        "solution": solution[1:-1] if solution.startswith("(") else solution})
    return out


def arithmetic_examples(n: int, seed: int, *, digits: int = 2, ops: str = "+-") -> list[dict]:
    """``n`` questions ``a op b`` with ``digits``-digit operands from ``seed``, answers attached."""
    rng = np.random.default_rng(seed)
    lo, hi = 10 ** (digits - 1), 10**digits
    out = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(lo, hi, size=2))
        op = str(rng.choice(list(ops)))
        answer = int(_OPS[op](Fraction(a), Fraction(b)))
        out.append({"prompt": f"Question: What is {a} {op} {b}?\nAnswer:", "answer": answer,
                    "solution": f" {answer}"})
    return out


@dataclasses.dataclass(frozen=True)
class RewardTask:
    """A shipped task: how to make examples from a seed, and its verifier."""

    make: Callable[..., list[dict]]
    reward: Reward


REWARD_TASKS: dict[str, RewardTask] = {
    "countdown": RewardTask(countdown_examples, countdown_reward),
    "arithmetic": RewardTask(arithmetic_examples, arithmetic_reward),
}


@dataclasses.dataclass(frozen=True)
class RewardSplits:
    """Examples of a reward task, split, and the reward that scores a completion of one."""

    train: list[dict]
    dev: list[dict]
    test: list[dict]
    reward: Reward


def resolve_reward(name: str) -> Reward:
    """The function ``"package.module:function"`` names (imported; the module must be importable).

    >>> resolve_reward("zojax.tasks.rewards:arithmetic_reward") is arithmetic_reward
    True
    """
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise DataError(f"reward {name!r}: name it as 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise DataError(f"reward {name!r}: {e}") from None
    if not callable(fn):
        raise DataError(f"reward {name!r} is not callable")
    return fn


def load_reward_task(name: str, *, source: str | None = None, reward: str | None = None, seed: int = 0,
                     num_train: int = 1000, num_dev: int = 100, num_test: int = 200) -> RewardSplits:
    """Train / dev / test examples of a shipped task (generated from ``seed``; the splits never share
    a prompt) or of ``name="prompts"``: the records of the JSONL ``source``, split with ``seed``.
    ``reward`` (``"module:function"``) replaces the task's verifier; ``prompts`` needs one."""
    if name == "prompts":
        if not source:
            raise DataError("task.name=prompts reads its prompts from a JSONL file: set task.source")
        if not reward:
            raise DataError("task.name=prompts needs a reward: set reward.function to 'module:function'")
        records = read_records(source)
        bad = next((i for i, r in enumerate(records) if not isinstance(r.get("prompt"), str)), None)
        if bad is not None:
            raise DataError(f"{source}: record {bad} has no string 'prompt'")
        order = [records[i] for i in sample_indices(len(records), None, seed)]
        n_test, n_dev = min(num_test, len(order) // 3), min(num_dev, len(order) // 3)
        test, dev, train = order[:n_test], order[n_test : n_test + n_dev], order[n_test + n_dev :][:num_train]
        return RewardSplits(train, dev, test, resolve_reward(reward))
    if name not in REWARD_TASKS:
        raise DataError(f"unknown reward task {name!r}; known: {sorted(REWARD_TASKS)} and 'prompts'")
    task = REWARD_TASKS[name]
    total = num_train + num_dev + num_test
    pool, seen = [], set()
    for ex in task.make(2 * total + 16, seed):  # duplicates dropped so no prompt is in two splits
        if ex["prompt"] not in seen:
            seen.add(ex["prompt"])
            pool.append(ex)
    if len(pool) < total:
        raise DataError(f"task {name!r}: only {len(pool)} distinct prompts for {total} requested")
    train, dev, test = pool[:num_train], pool[num_train : num_train + num_dev], pool[num_train + num_dev : total]
    return RewardSplits(train, dev, test, resolve_reward(reward) if reward else task.reward)


def with_demonstrations(example: dict, demos: Sequence[dict]) -> dict:
    """``example`` with solved ``demos`` (each needs a ``"solution"``) before its prompt: k-shot prompting."""
    if not demos:
        return example
    missing = next((d for d in demos if "solution" not in d), None)
    if missing is not None:
        raise DataError("k-shot prompting needs a 'solution' in every demonstration record")
    shots = "".join(d["prompt"] + d["solution"] + "\n\n" for d in demos)
    return {**example, "prompt": shots + example["prompt"]}
