"""What the command line refuses (issue 13): nothing may destroy or corrupt a run directory, and every user
error is one line naming the culprit, exit code 2, without a traceback. One test per case of the issue, on
the tiny random Llama and local dataset of conftest.py; refused commands must leave every file unchanged."""

import hashlib
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from zojax.cli import main
from zojax.config import load_config, refused_changes

from .runs import refused, tiny_config


def _files(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def _seed_lines(run_dir) -> list[str]:
    return (run_dir / "seeds.jsonl").read_text().splitlines()


# --- data loss ----------------------------------------------------------------------------------


def test_1_replay_and_export_never_replace_the_run(run, tmp_path, capsys):
    run_dir, _ = run
    before = _files(run_dir)
    r = str(run_dir)
    refused(capsys, main(["replay", "--run", r, "--output", r]), f"--output {r} is the run directory")
    refused(capsys, main(["replay", "--run", r, "--output", f"{r}/model"]), "lies inside the run directory")
    refused(capsys, main(["replay", "--run", r, "--output", str(tmp_path), "--overwrite"]), "contains the run directory")
    refused(capsys, main(["export", "--run", r, "--output", r, "--overwrite"]), "is the run directory")
    assert _files(run_dir) == before
    # a non-empty directory: never without --overwrite, and --overwrite replaces only a model directory
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    line = refused(capsys, main(["replay", "--run", r, "--output", str(other)]), "not empty; pass --overwrite")
    assert "overwrite=True" not in line
    refused(capsys, main(["export", "--run", r, "--output", str(other), "--overwrite"]), "not a model directory")
    assert (other / "keep.txt").read_text() == "mine" and _files(run_dir) == before


def test_2_a_config_mismatch_is_an_error_and_sets_nothing_aside(run, capsys):
    run_dir, cfg = run
    before = _files(run_dir)
    refused(capsys, main(["eval", "--run", str(run_dir), "optim.name=adam"]), "optim.name ('zo_sgd' -> 'adam')")
    refused(capsys, main(["export", "--run", str(run_dir), "--output", str(run_dir.parent / "x"), "zo.scope=norms_biases"]),
            "zo.scope ('all' -> 'norms_biases')")
    refused(capsys, main(["train", "--config", str(cfg), "--resume", "optim.name=adam", f"train.output_dir={run_dir}"]),
            "--resume cannot change optim.name")
    assert _files(run_dir) == before
    # a config.yaml edited by hand: the checkpoints read fine but hold other arrays, so they are not damaged
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("scope: all", "scope: norms_biases"))
    before = _files(run_dir)
    refused(capsys, main(["eval", "--run", str(run_dir)]), "checkpoints/4 does not fit this run", "nothing was changed")
    assert _files(run_dir) == before
    assert not list((run_dir / "checkpoints").glob("*.unreadable"))
    # really damaged checkpoints are set aside; with none left, --resume would overwrite the seed log: refused
    (run_dir / "config.yaml").write_text(text)
    for f in (run_dir / "checkpoints").rglob("*"):
        if f.is_file() and "state" in str(f):
            f.write_bytes(b"garbage")
    seeds = (run_dir / "seeds.jsonl").read_bytes()
    refused(capsys, main(["train", "--config", str(cfg), "--resume", f"train.output_dir={run_dir}"]),
            "no checkpoint in", "could be read", "zojax replay --run")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2.unreadable", "4.unreadable"]
    assert (run_dir / "seeds.jsonl").read_bytes() == seeds


def test_3_train_into_a_used_directory_is_refused_before_writing(run, tmp_path, capsys):
    run_dir, cfg = run
    before = _files(run_dir)
    refused(capsys, main(["train", "--config", str(cfg), f"train.output_dir={run_dir}", "optim.lr=0.5"]),
            "already holds a run", "checkpoints 2, 4", "pass --resume")
    assert _files(run_dir) == before
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "config.json").write_text("{}")
    refused(capsys, main(["train", "--config", str(cfg), f"train.output_dir={stranger}"]), "holds no zojax run")
    assert sorted(p.name for p in stranger.iterdir()) == ["config.json"]


def test_4_resume_may_change_only_what_does_not_change_the_steps(run, capsys):
    run_dir, cfg = run
    before = _files(run_dir)
    refused(capsys, main(["train", "--config", str(cfg), "--resume", "optim.lr=0.001", f"train.output_dir={run_dir}"]),
            "--resume cannot change optim.lr (0.002 -> 0.001)", "may change only", "train.steps")
    assert _files(run_dir) == before
    # decaying schedules run over train.steps: there it is fixed too
    linear = load_config(cfg, ["optim.schedule=linear"])
    assert "train.steps" in refused_changes(linear, load_config(cfg, ["optim.schedule=linear", "train.steps=8"]), resume=True)
    assert not refused_changes(load_config(cfg), load_config(cfg, ["train.steps=8"]), resume=True)
    # what may change does, and the config records it
    allowed = ["train.keep_checkpoints=5", "train.eval_every=2", "train.steps_per_call=4", f"train.output_dir={run_dir}"]
    assert main(["train", "--config", str(cfg), "--resume", *allowed]) == 0
    assert load_config(run_dir / "config.yaml").train.keep_checkpoints == 5
    assert _files(run_dir)["seeds.jsonl"] == before["seeds.jsonl"]


# --- wrong results with exit code 0 ---------------------------------------------------------------


def test_5_non_finite_weights_are_never_checkpointed_nor_finished(assets, tmp_path, capsys):
    import jax

    import zojax
    from zojax.checkpoint import Checkpointer, NonFiniteError, all_finite

    refused(capsys, main(["eval", "optim.lr=.inf"]), "optim.lr", "finite")
    # the checkpointer refuses NaN weights, writing nothing
    state, _ = zojax.init({"w": jnp.ones(3)}, zojax.ZOSpec(), zojax.zo_sgd(0.1), jax.random.PRNGKey(0))
    ckpt = Checkpointer(tmp_path / "ckpts")
    ckpt.save(state, {})
    with pytest.raises(NonFiniteError, match=r"step 1 hold NaN or inf; not checkpointed.*last good checkpoint is step 0"):
        ckpt.save(state._replace(params={"w": jnp.array([1.0, jnp.nan, 1.0])}, step=jnp.int32(1)), {})
    assert ckpt.steps() == [0]
    ckpt.close()
    # an update that overflows: the run must not end "finished" with rc 0, and what it saved is finite
    out = tmp_path / "overflow"
    rc = main(["train", "--config", str(tiny_config(assets, out, optim__lr=3.4e38, train__checkpoint_every=0, train__steps=2))])
    line = refused(capsys, rc, "Lower optim.lr", code=1)
    assert "skipped" in line or "NaN or inf" in line
    assert not (out / "summary.json").exists()
    from zojax.run import build_run, trained_params

    if list((out / "checkpoints").glob("[0-9]*")):
        params, _ = trained_params(build_run(load_config(out / "config.yaml")), out)
        assert all_finite(params)


def test_6_the_seed_log_must_reach_the_checkpoint(run, capsys):
    run_dir, cfg = run
    log = _seed_lines(run_dir)
    assert len(log) == 5  # header + steps 0..3
    before = _files(run_dir)
    resume = ["train", "--config", str(cfg), "--resume", f"train.output_dir={run_dir}"]
    # deleted: a resumed run would write a log of the later steps only
    (run_dir / "seeds.jsonl").unlink()
    refused(capsys, main(resume), "seeds.jsonl is missing", "step 4")
    assert not (run_dir / "seeds.jsonl").exists()
    # cut short, or with a gap: replay would rebuild other weights with rc 0
    (run_dir / "seeds.jsonl").write_text("\n".join(log[:3]) + "\n")
    refused(capsys, main(["replay", "--run", str(run_dir)]), "records steps 0-1", "checkpoint is at step 4")
    refused(capsys, main(resume), "records steps 0-1")
    (run_dir / "seeds.jsonl").write_text("\n".join(log[:2] + log[3:]) + "\n")
    refused(capsys, main(["replay", "--run", str(run_dir)]), "records steps 0, 2-3", "must record steps 0-3")
    del before["seeds.jsonl"]
    assert {k: v for k, v in _files(run_dir).items() if k != "seeds.jsonl"} == before


def test_7_a_torn_last_line_is_dropped_on_resume(run, capsys):
    run_dir, cfg = run
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    with open(run_dir / "seeds.jsonl", "a") as f:
        f.write('{"step": 4, "coeffs": [0.1')
    assert main(["train", "--config", str(cfg), "--resume", f"train.output_dir={run_dir}"]) == 0
    err = capsys.readouterr().err
    assert "metrics.jsonl: dropped line" in err and "seeds.jsonl: dropped line" in err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kind"] == "eval" and records[-1]["step"] == 4


# --- unclear errors --------------------------------------------------------------------------------


def test_8_model_errors_name_the_model(assets, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from zojax.models.loading import smollm2_path

    def fails(name, *fragments):
        refused(capsys, main(["eval", "--config", str(tiny_config(assets, tmp_path / "r")), f"model.name={name}"]), *fragments)

    fails(tmp_path / "nope", f"model path {tmp_path / 'nope'} does not exist")
    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no config.json in")
    shutil.copytree(assets / "model", tmp_path / "short")
    weights = tmp_path / "short" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    fails(tmp_path / "short", "model.safetensors")
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    fails(tmp_path / "gpt2", "unsupported architecture ['GPT2LMHeadModel']", "supported:")
    with open(smollm2_path(), "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(4 << 20))
    fails(tmp_path / "cut.gguf", "cut.gguf: truncated or not a GGUF file")
    (tmp_path / "junk.gguf").write_bytes(np.random.default_rng(0).bytes(4096))
    fails(tmp_path / "junk.gguf", "junk.gguf: truncated or not a GGUF file")
    fails("smollm2-135", "no such model alias 'smollm2-135'", "did you mean 'smollm2-135m'")

    def offline(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    fails("no-such-model", "'no-such-model' is neither a local path nor an alias (smollm2-135m)", "hub is unreachable")


def test_9_data_errors_name_the_file_row_and_key(assets, tmp_path, capsys):
    cfg = tiny_config(assets, tmp_path / "r")
    rows = [json.loads(line) for line in (assets / "data.jsonl").read_text().splitlines()]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows[:2]) + b'{"text": "caf\xe9"}\n')
    refused(capsys, main(["eval", "--config", str(cfg), f"task.source={latin1}"]), "latin1.jsonl: line 3 is not UTF-8")
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps(dict(r, text=5) if i == 1 else r) + "\n" for i, r in enumerate(rows)))
    refused(capsys, main(["eval", "--config", str(cfg), f"task.source={numbers}"]),
            "numbers.jsonl: row 2: column 'text' holds 5 (int); text fields must be strings")
    out = tmp_path / "never"
    for override, fragment in (
        ("task.label_map={neg: -1, pos: 1}", "task.label_map.neg: Input should be greater than or equal to 0"),
        ("task.num_dev=-1", "task.num_dev"),
        ("task.num_train=0", "task.num_train"),
        ("task.data_seed=-1", "task.data_seed"),
        ("train.micro_batches=3", "train.micro_batches=3 does not divide train.batch_size=8; allowed: [1, 2, 4, 8]"),
        ("task.icl_examples=100000", "task.icl_examples=100000 but the train split holds only"),
    ):
        refused(capsys, main(["train", "--config", str(cfg), f"train.output_dir={out}", override]), fragment)
    assert not out.exists()  # refused before any work


def test_10_config_errors_name_the_key(run, tmp_path, capsys):
    run_dir, cfg = run
    refused(capsys, main(["train", "--config", str(tmp_path)]), f"--config {tmp_path} is a directory")
    refused(capsys, main(["eval", "--config", str(cfg), "zo.scope={a"]), "override zo.scope={a: the value is not valid YAML")
    refused(capsys, main(["eval", "--config", str(cfg), "zo.scope=a["]), "zo.scope: 'a[' is neither a preset")
    # overrides after --resume are overrides (here one naming an unknown key)
    refused(capsys, main(["train", "--config", str(cfg), "--resume", "zo.rnak=3"]), "unknown key 'zo.rnak'")
    refused(capsys, main(["train", "--config", str(cfg), "train.output_dir="]), "train.output_dir: must not be empty")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "x").write_text("x")
    line = refused(capsys, main(["export", "--run", str(run_dir), "--output", str(tmp_path / "export")]), "pass --overwrite")
    assert "overwrite=True" not in line


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    assert main(["train", "--config", str(tmp_path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("ZOJAX_DEBUG", "1")
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err
