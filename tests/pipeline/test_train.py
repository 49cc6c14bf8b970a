"""The pipeline end to end on a tiny random Llama and a tiny local dataset: CLI, resume, replay, export."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zojax import accelerator
from zojax.cli import main
from zojax.config import ConfigError, bundled_configs, load_config

from .runs import checkpoint_params, metrics, write_config


@pytest.fixture(scope="module")
def full_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["train", "--config", str(write_config(assets, out))]) == 0
    return out


def test_train_writes_all_outputs_and_loss_decreases(full_run):
    summary = json.loads((full_run / "summary.json").read_text())
    for key in ("zero_shot_accuracy", "final_accuracy", "steps", "wall_seconds", "steps_per_second", "peak_memory_mb", "config"):
        assert key in summary, key
    assert summary["steps"] == 12 and summary["status"] == "finished"
    # model.dtype defaults to auto: float32 on the CPU; the accelerator defaults are recorded
    assert summary["config"]["model"]["dtype"] == "auto" and summary["compute_dtype"] == "float32"
    assert summary["xla_options"] == accelerator.XLA_OPTIONS
    records = metrics(full_run)
    train = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(train) == 3 and train[-1] < train[0]
    assert any(r["kind"] == "eval" and r["split"] == "dev" for r in records)
    assert (full_run / "curves.png").stat().st_size > 1000
    assert (full_run / "seeds.jsonl").exists()
    assert sorted(int(p.name) for p in (full_run / "checkpoints").iterdir() if p.name.isdigit()) == [4, 8, 12]


def test_resume_after_step_limit_is_bitwise(assets, full_run, tmp_path):
    out = tmp_path / "stopped"
    cfg = write_config(assets, out, train__stop_after=6)  # not a call boundary of the full run: calls differ
    assert main(["train", "--config", str(cfg)]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "stopped"
    cfg = write_config(assets, out)
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    _assert_same_final_weights(out, full_run)


def _assert_same_final_weights(run_dir, reference_dir):
    """The run ended at step 12 with weights bitwise equal to the uninterrupted reference run's."""
    resumed, step = checkpoint_params(run_dir)
    expected, _ = checkpoint_params(reference_dir)
    assert step == 12
    for a, b in zip(resumed, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise(assets, full_run, tmp_path):
    out = tmp_path / "killed"
    cfg = write_config(assets, out, train__steps_per_call=1, train__checkpoint_every=2)
    proc = subprocess.Popen([sys.executable, "-m", "zojax.cli", "train", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    ckpts = out / "checkpoints"
    while time.time() < deadline:
        done = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
        if any(int(p.name) >= 4 for p in done):
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(["train", "--config", str(cfg), "--resume"]) == 0
    _assert_same_final_weights(out, full_run)


def test_replay_equals_checkpoint_and_export_loads_in_transformers(full_run, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from zojax.models import from_pretrained

    assert main(["replay", "--run", str(full_run)]) == 0
    assert "equal the checkpoint of step 12" in capsys.readouterr().out
    export = tmp_path / "export"
    assert main(["export", "--run", str(full_run), "--output", str(export)]) == 0
    model, _, _ = from_pretrained(str(export))
    trained, _ = checkpoint_params(full_run)
    _, state = nnx.split(model)
    for a, b in zip(jax.tree.leaves(state), trained):
        np.testing.assert_array_equal(a, b)
    ids = np.array([[1, 5, 7, 9, 11]], np.int32)
    ours = np.asarray(model(jnp.asarray(ids), jnp.ones_like(ids)))
    hf = AutoModelForCausalLM.from_pretrained(str(export)).float().eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# --- bad input -----------------------------------------------------------------------------


def test_config_errors_name_the_key(assets, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train.stpes'.*allowed here: steps"):
        load_config(None, ["train.stpes=3"])
    with pytest.raises(ConfigError, match=r"zo.members"):
        load_config(None, ["zo.members=many"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2


def test_every_shipped_config_loads_and_builds_its_spec():
    from zojax.run import make_spec

    for name in bundled_configs():
        spec = make_spec(load_config(name))
        assert spec.members >= 1, name
    mezo = make_spec(load_config("opt13b_sst2_mezo"))
    assert mezo.lazy_dense and not mezo.adapter


def test_missing_data_file_and_columns(assets, tmp_path):
    cfg = load_config(write_config(assets, tmp_path / "r", task__source=str(tmp_path / "missing.jsonl")))
    from zojax.train import train

    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        train(cfg)
    cfg = load_config(write_config(assets, tmp_path / "r2", task__columns={"sentence": "review", "label": "sentiment"}))
    with pytest.raises(KeyError, match="review"):
        train(cfg)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config(write_config(assets, tmp_path / "r3", task__source=str(empty)))
    with pytest.raises(ValueError, match="empty|no examples|no rows"):
        train(cfg)


def test_truncation_is_counted_and_non_finite_losses_stop_the_run(assets, tmp_path, caplog):
    from zojax.train import TrainingError, train

    cfg = load_config(write_config(assets, tmp_path / "trunc", task__max_length=8, train__steps=4, train__eval_every=0))
    summary = train(cfg)
    assert summary["truncated_examples"] == 220  # every example of the three splits
    assert "truncated from the left" in caplog.text
    # an objective that turns non-finite after a good checkpoint: the steps are skipped, then the run stops
    from zojax import tasks

    # a resumed run may not change train.objective: the same name turns non-finite after a good checkpoint
    tasks.register_objective("flip_for_test", tasks.get_objective("ce"), on="apply")
    out = tmp_path / "nan"
    train(load_config(write_config(assets, out, train__objective="flip_for_test", train__stop_after=4, train__eval_every=0)))
    tasks.register_objective("flip_for_test", lambda lp, batch: jnp.nan * lp.sum())
    cfg = load_config(write_config(assets, out, train__objective="flip_for_test", train__max_consecutive_skips=3, train__eval_every=0))
    with pytest.raises(TrainingError, match="3 consecutive steps had non-finite losses.*step 4"):
        train(cfg, resume=True)
    from zojax.run import build_run, trained_params

    _, step = trained_params(build_run(cfg), out)  # the last good checkpoint is intact and restorable
    assert step == 4


def test_corrupt_latest_checkpoint_falls_back(assets, tmp_path):
    from zojax.train import train

    out = tmp_path / "corrupt"
    cfg = load_config(write_config(assets, out, train__stop_after=8))
    train(cfg)
    latest = out / "checkpoints" / "8"
    for f in latest.rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
            f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="falling back to step 4"):
        summary = train(load_config(write_config(assets, out)), resume=True)
    assert summary["steps"] == 12
