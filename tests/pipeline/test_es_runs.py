"""Reward runs: the in-program answer-token reward, and a whole ES run through the CLI (train, eval, replay).
The reward tasks themselves are tested in tests/tasks/test_rewards.py."""

import json

import numpy as np
import pytest

from zojax.cli import main

from ..tiny_assets import make_char_assets
from .runs import metrics


@pytest.fixture(scope="module")
def char_assets(tmp_path_factory):
    return make_char_assets(tmp_path_factory.mktemp("char"))


def test_answer_token_reward_matches_bare_answers_only(char_assets):
    from transformers import AutoTokenizer

    from zojax.tasks.generation import answer_token_reward

    tok = AutoTokenizer.from_pretrained(char_assets / "model")
    examples = [{"solution": " 85"}, {"solution": " 7"}]
    reward = answer_token_reward(examples, tok)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [ids(" 85\nab"), ids(" 850ab"), ids(" 7.abc"), ids(" 8abcd"), ids(" 85") + [tok.eos_token_id] * 3]
    got = reward(np.array([r[:6] for r in rows], np.int32), np.array([0, 0, 1, 1, 0], np.int32))
    assert np.asarray(got).tolist() == pytest.approx([1.1, 0.0, 1.1, 0.0, 1.1])


def test_answer_token_reward_credits_bare_integers_and_their_closeness(char_assets):
    """Format credit (0.1) for a wrong bare integer, as the host verifier gives, and with ``closeness`` a
    credit that halves with each unit of error; anything that is not a bare integer earns nothing."""
    from transformers import AutoTokenizer

    from zojax.tasks.generation import answer_token_reward

    tok = AutoTokenizer.from_pretrained(char_assets / "model")
    examples = [{"solution": " 85"}, {"solution": " -7"}]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    texts = [" 84\nab", " -5.\nx", " 83", " 8 4ab", " = 85", " 85\nab", " -7\naa", " 9x\n"]
    rows = np.full((len(texts), 6), tok.eos_token_id, np.int32)
    for i, t in enumerate(texts):
        rows[i, : len(ids(t)[:6])] = ids(t)[:6]
    index = np.array([0, 1, 0, 0, 0, 0, 1, 1], np.int32)
    eos = (tok.eos_token_id,)
    plain = answer_token_reward(examples, tok, eos=eos)(rows, index)
    assert np.asarray(plain).tolist() == pytest.approx([0.1, 0.1, 0.1, 0.0, 0.0, 1.1, 1.1, 0.0])
    near = answer_token_reward(examples, tok, eos=eos, closeness=0.5)(rows, index)
    assert np.asarray(near).tolist() == pytest.approx([0.35, 0.225, 0.225, 0.0, 0.0, 1.1, 1.1, 0.0])
    with pytest.raises(ValueError, match="integer solutions"):
        answer_token_reward([{"solution": " 8.5"}], tok, closeness=0.5)


@pytest.fixture(scope="module")
def es_run(char_assets, tmp_path_factory):
    """A 4-step ES run of the tiny char-level model on the arithmetic task (host reward), 2 steps per call."""
    import yaml

    out = tmp_path_factory.mktemp("es") / "run"
    cfg = {
        "model": {"name": str(char_assets / "model")},
        "task": {"name": "arithmetic", "num_train": 40, "num_dev": 4, "num_test": 6, "max_length": 32},
        "reward": {"samples": 2, "max_new_tokens": 3, "temperature": 1.0},
        "zo": {"method": "lozo", "rank": 1, "refresh_every": 1, "members": 2, "eps": 0.1, "scope": "all",
               "estimator": "zscore"},
        "optim": {"name": "zo_sgd", "lr": 0.05},
        "train": {"steps": 4, "batch_size": 2, "steps_per_call": 2, "eval_batch_size": 4, "checkpoint_every": 2,
                  "output_dir": str(out), "progress": False},
    }
    path = out.parent / "es.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path)]) == 0
    return out


def test_es_run_logs_rewards_and_evaluates_held_out_prompts(es_run, capsys):
    records = metrics(es_run)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4]
    for r in train:
        assert r["reward_max"] >= r["reward_mean"] and r["loss"] == pytest.approx(-r["reward_mean"])
        assert 0.0 <= r["reward_centre"] <= 1.1
    tests = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in tests] == [0, 4] and all(r["examples"] == 6 for r in tests)
    summary = json.loads((es_run / "summary.json").read_text())
    assert summary["zero_shot_reward"] == tests[0]["reward"] and summary["final_reward"] == tests[-1]["reward"]
    assert summary["final_accuracy"] == tests[-1]["accuracy"]
    capsys.readouterr()
    assert main(["eval", "--run", str(es_run)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 4 and report["test"]["examples"] == 6
    assert report["test"]["reward"] == pytest.approx(tests[-1]["reward"])  # greedy: the same answers again
    assert 0.0 <= report["test"]["accuracy"] <= 1.0


def test_es_run_replays_bitwise_from_its_seed_log(es_run, capsys, tmp_path):
    capsys.readouterr()
    assert main(["replay", "--run", str(es_run)]) == 0
    assert "equal the checkpoint of step 4 (bitwise)" in capsys.readouterr().out
    assert len((es_run / "seeds.jsonl").read_text().splitlines()) >= 4
