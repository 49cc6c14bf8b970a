"""zojax.tasks.rewards: reward tasks generated offline from a seed, their splits and verifiers, and
bring-your-own prompts and reward."""

import json
from fractions import Fraction

import pytest

from zojax.tasks import DataError
from zojax.tasks import rewards as rw


def test_tasks_are_generated_from_the_seed_and_splits_share_no_prompt():
    a = rw.load_reward_task("countdown", seed=3, num_train=50, num_dev=10, num_test=20)
    b = rw.load_reward_task("countdown", seed=3, num_train=50, num_dev=10, num_test=20)
    c = rw.load_reward_task("countdown", seed=4, num_train=50, num_dev=10, num_test=20)
    assert a.train == b.train and a.test == b.test and a.train != c.train
    prompts = [{e["prompt"] for e in s} for s in (a.train, a.dev, a.test)]
    assert [len(p) for p in prompts] == [50, 10, 20]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])


def test_countdown_verifier_accepts_exactly_the_right_expressions():
    for ex in rw.countdown_examples(100, seed=1):
        assert rw.evaluate_expression(ex["solution"]) == ex["target"]
        assert rw.countdown_reward(f"work</think>\n<answer>{ex['solution']}</answer>", ex) == pytest.approx(1.1)
    ex = {"numbers": [3, 5, 2], "target": 4}
    good = "(3 + 5) / 2"
    assert rw.countdown_reward(f"</think>\n<answer>{good}</answer>", ex) == pytest.approx(1.1)
    assert rw.countdown_reward(f"</think> <answer>{good}</answer>", ex) == pytest.approx(1.06)  # not the exact format
    assert rw.countdown_reward("</think>\n<answer>3 + 5 - 2 - 2</answer>", ex) == pytest.approx(0.1)  # 2 used twice
    assert rw.countdown_reward("</think>\n<answer>(3 * 5) / 2</answer>", ex) == pytest.approx(0.1)  # 7.5 != 4
    assert rw.countdown_reward("</think>\n<answer>__import__('os')</answer>", ex) == pytest.approx(0.1)
    assert rw.countdown_reward("no tags", ex) == 0.0
    assert rw.evaluate_expression("7 / 2") == Fraction(7, 2) and rw.evaluate_expression("(1 + 2") is None


def test_arithmetic_reward_reads_the_first_line():
    ex = {"answer": 85}
    assert rw.arithmetic_reward(" 85\nQuestion: What is 1 + 1?", ex) == pytest.approx(1.1)
    assert rw.arithmetic_reward("37 + 48 = 85.", ex) == pytest.approx(1.0)
    assert rw.arithmetic_reward(" 58", ex) == pytest.approx(0.1)
    assert rw.arithmetic_reward("", ex) == 0.0
    for e in rw.arithmetic_examples(50, seed=0):
        assert rw.arithmetic_reward(e["solution"], e) == pytest.approx(1.1)


def _reward_of_length(text, example):  # a bring-your-own reward, named "module:function" below
    return float(len(text) == example["want"])


def test_bring_your_own_prompts_and_reward(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {i}", "want": i % 3}) + "\n" for i in range(30)))
    name = f"{__name__}:_reward_of_length"
    splits = rw.load_reward_task("prompts", source=str(path), reward=name, seed=0, num_train=100, num_dev=5, num_test=5)
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (20, 5, 5)
    assert splits.reward("ab", {"want": 2}) == 1.0
    with pytest.raises(DataError, match="module:function"):
        rw.load_reward_task("prompts", source=str(path), reward="nocolon")
    with pytest.raises(DataError, match="needs a reward"):
        rw.load_reward_task("prompts", source=str(path))
    path.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match="record 0 has no string 'prompt'"):
        rw.load_reward_task("prompts", source=str(path), reward=name)
