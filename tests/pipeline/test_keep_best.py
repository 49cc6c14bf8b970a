"""train.keep_best: the state of the best dev evaluation is kept, tested, evaluated and exported; resume keeps it."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from zojax.cli import main
from zojax.config import ConfigError, load_config
from zojax.run import build_run, trained_params
from zojax.seedlog import SeedLog, replay
from zojax.train import train

from .runs import checkpoint_params, metrics, write_config

BEST = dict(train__steps=8, train__eval_every=2, train__keep_best=True, train__checkpoint_every=4,
            train__steps_per_call=2)


def _evaluations(run_dir: Path, split: str) -> list[dict]:
    return [r for r in metrics(run_dir) if r["kind"] == "eval" and r["split"] == split]


def _expected_best(dev: list[dict]) -> dict:
    """The first of the highest-accuracy dev evaluations (a later tie does not replace an earlier best)."""
    return max(dev, key=lambda r: r["accuracy"])  # max keeps the first of equal keys


@pytest.fixture(scope="module")
def best_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("best") / "run"
    # lr high enough that the dev accuracy moves between evaluations
    summary = train(load_config(write_config(assets, out, optim__lr=2e-1, **BEST)))
    return out, summary


def test_keep_best_needs_dev_evaluations(assets, tmp_path):
    with pytest.raises(ConfigError, match="train.keep_best needs dev evaluations"):
        load_config(write_config(assets, tmp_path / "r", train__keep_best=True, train__eval_every=0))


def test_the_best_dev_state_is_kept_tested_and_loaded(best_run):
    out, summary = best_run
    dev = _evaluations(out, "dev")
    assert [r["step"] for r in dev] == [2, 4, 6, 8]  # the last step is a candidate too
    best = _expected_best(dev)
    assert summary["selected_step"] == best["step"]
    assert summary["best_dev_accuracy"] == best["accuracy"]
    assert sorted(int(p.name) for p in (out / "best").iterdir() if p.name.isdigit()) == [best["step"]]
    # the test evaluation is of the selected state, and eval / export read that state too
    final_test = _evaluations(out, "test")[-1]
    assert final_test["step"] == best["step"] and final_test["accuracy"] == summary["final_accuracy"]
    leaves, step = checkpoint_params(out)
    assert step == best["step"]

    # the kept state is the run's state at that step: the seed log replayed up to it rebuilds it bitwise
    cfg = load_config(out / "config.yaml")
    run = build_run(cfg)
    log = SeedLog.load(out / "seeds.jsonl")
    log.truncate(best["step"])
    rebuilt = jax.tree.leaves(replay(run.params, log, run.optimizer, spec=run.spec))
    for a, b in zip(rebuilt, leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # best=False reads the last checkpoint (what zojax replay compares with)
    _, last = trained_params(run, out, best=False)
    assert last == 8


def test_eval_reports_the_selected_step(best_run, capsys):
    out, summary = best_run
    assert main(["eval", "--run", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == summary["selected_step"]
    assert report["test"]["accuracy"] == pytest.approx(summary["final_accuracy"])


def test_resumed_run_selects_the_same_state(assets, best_run, tmp_path):
    out, summary = best_run
    resumed = tmp_path / "resumed"
    train(load_config(write_config(assets, resumed, optim__lr=2e-1, train__stop_after=4, **BEST)))
    again = train(load_config(write_config(assets, resumed, optim__lr=2e-1, **BEST)), resume=True)
    assert again["selected_step"] == summary["selected_step"]
    assert again["final_accuracy"] == summary["final_accuracy"]
    for a, b in zip(checkpoint_params(resumed)[0], checkpoint_params(out)[0], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
