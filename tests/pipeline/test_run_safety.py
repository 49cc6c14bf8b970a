"""Run safety, round two (issue 23): a killed keep_best run resumes, one process per run directory, atomic run
files, LM evaluation that measures, strict config values, replay's base check, the last tracebacks gone, float16
updates that cannot overflow and one weight-decay / micro-batch rule. One test per finding, on the tiny random
Llama of conftest.py; a refused command must leave every file unchanged."""

import dataclasses
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax.checkpoint import Checkpointer, CheckpointWriteError, TrainingError
from zojax.cli import main
from zojax.config import load_config
from zojax.files import write_atomic
from zojax.rundir import LOCK_NAME, RunDirError, RunLock
from zojax.seedlog import SeedLogError
from zojax.train import train

from .runs import checkpoint_params, metrics, refused, tiny_config, write_config


def _files(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(root).rglob("*")) if p.is_file()
    }


def _quiet(*args, **kwargs):
    return None


@pytest.fixture
def compile_cache(tmp_path_factory):
    """jax's persistent compilation cache while a test trains the same programs again and again."""
    from jax._src import compilation_cache  # reset_cache: jax sets its cache up once per process

    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")
    saved = {name: getattr(jax.config, name) for name in options}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


# --- 1. keep_best: a kill at any save boundary resumes ------------------------------------------------


def test_1_keep_best_resumes_from_every_kill_point(assets, tmp_path, monkeypatch, compile_cache):
    out = tmp_path / "ref"
    over = dict(optim__lr=2e-1, train__steps=6, train__eval_every=2, train__checkpoint_every=4, train__steps_per_call=2,
                train__keep_best=True)
    config = write_config(assets, out, **over)
    kills: list[tuple[str, Path]] = []
    save = Checkpointer.save

    def save_then_snapshot(self, state, meta):
        # the directory as a kill right after this save would leave it (nothing after the save has run)
        save(self, state, meta)
        snapshot = tmp_path / f"kill{len(kills)}"
        shutil.copytree(out, snapshot, ignore=shutil.ignore_patterns(LOCK_NAME))
        kills.append((f"{self.directory.name}/{int(state.step)}", snapshot))

    monkeypatch.setattr(Checkpointer, "save", save_then_snapshot)
    reference = train(load_config(config), echo=_quiet)
    monkeypatch.undo()
    names = [name for name, _ in kills]
    # best/2 comes before any regular checkpoint, and best/N before checkpoints/N
    assert names[0] == "best/2" and names[-1] == "checkpoints/6" and "checkpoints/4" in names
    for name in ("best/4", "best/6"):
        if name in names:
            assert names.index(name) < names.index(f"checkpoints/{name[-1]}")
    expected, _ = checkpoint_params(out)
    for name, snapshot in kills:
        summary = train(load_config(config, [f"train.output_dir={snapshot}"]), resume=True, echo=_quiet)
        assert summary["selected_step"] == reference["selected_step"], name
        assert summary["final_accuracy"] == reference["final_accuracy"], name
        assert sorted(int(p.name) for p in (snapshot / "best").iterdir()) == [reference["selected_step"]], name
        leaves, step = checkpoint_params(snapshot)
        assert step == reference["selected_step"], name
        for a, b in zip(leaves, expected, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- 2. one process writes a run directory -------------------------------------------------------------


def test_2_a_run_directory_is_locked_while_written(run, capsys):
    run_dir, cfg = run
    before = _files(run_dir)
    holder = RunLock(run_dir, echo=_quiet).acquire()  # another process writing the run (a flock of its own)
    assert (run_dir / LOCK_NAME).is_file()
    line = refused(capsys, main(["train", "--config", str(cfg), "--resume", f"train.output_dir={run_dir}"]),
                   "is being written by another zojax process", f"pid {os.getpid()}")
    assert "Traceback" not in line
    holder.release()
    assert _files(run_dir) == before


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_2_a_stale_lock_is_taken_over_and_another_hosts_lock_refused(tmp_path):
    messages: list[str] = []
    lock_file = tmp_path / LOCK_NAME
    lock_file.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}))
    lock = RunLock(tmp_path, echo=messages.append).acquire()
    assert len(messages) == 1 and "taking over the stale lock" in messages[0] and "no longer runs" in messages[0]
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()
    # a live holder recorded by a file system that does not share flocks, and a holder on another host
    for record, fragment in (({"pid": os.getppid(), "host": socket.gethostname()}, "which still runs"),
                             ({"pid": 1, "host": "elsewhere"}, "another host")):
        lock_file.write_text(json.dumps({**record, "since": "2026-01-01T00:00:00"}))
        with pytest.raises(RunDirError, match=fragment):
            RunLock(tmp_path, echo=messages.append).acquire()
        assert json.loads(lock_file.read_text())["pid"] == record["pid"]  # left as it was


# --- 3. LM evaluation measures; keep_best selects on it ---------------------------------------------------


def _lm_data(assets) -> Path:
    """Documents of different lengths (micro-batches then hold different token counts)."""
    words = ["the", "film", "was", "a", "great", "fun", "story", "with", "actors", "and", "it", "was", "charming"]
    path = assets / "lm.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps({"text": " ".join(words[: 2 + (i * 5) % 11])}) + "\n" for i in range(64)))
    return path


def _lm(assets, out, **over):
    return write_config(assets, out, task__name="lm", task__source=str(_lm_data(assets)), task__columns={},
                        task__label_map={}, task__num_train=40, task__num_dev=8, task__num_test=8, **over)


def test_3_lm_evaluation_measures_and_keep_best_selects_on_it(assets, tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(["eval", "--config", str(_lm(assets, out))]) == 0
    report = json.loads(capsys.readouterr().out)
    for split in ("dev", "test"):
        r = report[split]
        assert r["loss"] > 1.0 and r["tokens"] > r["examples"] == 8
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    summary = train(load_config(_lm(assets, out, train__steps=4, train__steps_per_call=2, train__eval_every=2,
                                    train__checkpoint_every=2, train__keep_best=True, optim__lr=5e-2)), echo=_quiet)
    dev = [r for r in metrics(out) if r["kind"] == "eval" and r["split"] == "dev"]
    assert [r["step"] for r in dev] == [2, 4] and len({r["loss"] for r in dev}) == 2
    assert summary["selected_step"] == min(dev, key=lambda r: r["loss"])["step"]


# --- 4. a finished run resumed with fewer steps; a stop_after already passed --------------------------------


def test_4_a_run_never_goes_back_and_a_passed_stop_after_is_honoured(run, capsys):
    run_dir, cfg = run
    before = _files(run_dir)
    resume = ["train", "--config", str(cfg), "--resume", f"train.output_dir={run_dir}"]
    refused(capsys, main([*resume, "train.steps=2"]), "is at step 4, past train.steps=2", "train.steps >= 4")
    assert _files(run_dir) == before
    assert json.loads((run_dir / "summary.json").read_text())["final_accuracy"] is not None
    # stopped at step 4 of 8 with stop_after=2: nothing is trained, the checkpoints and seed log stay
    assert main([*resume, "train.steps=8", "train.stop_after=2"]) == 0
    assert "train.stop_after=2 is reached already, nothing to train" in capsys.readouterr().out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 4
    after = _files(run_dir)
    assert {k: v for k, v in after.items() if k.startswith(("checkpoints", "seeds"))} == {
        k: v for k, v in before.items() if k.startswith(("checkpoints", "seeds"))
    }


# --- 5. run files are replaced whole -------------------------------------------------------------------


def test_5_run_files_are_written_atomically(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, a write fails (EFBIG) instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
    try:
        with pytest.raises(OSError):
            write_atomic(path, "x" * 4096)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert path.read_text() == "old: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    write_atomic(path, "new: 2\n")
    assert path.read_text() == "new: 2\n"


# --- 6. config values are not coerced ------------------------------------------------------------------


def test_6_config_values_are_not_coerced(assets, tmp_path, capsys):
    cfg = str(tiny_config(assets, tmp_path / "r"))
    refused(capsys, main(["eval", "--config", cfg, "zo.scope="]), "zo.scope must not be empty", "zo.scope=all")
    refused(capsys, main(["eval", "--config", cfg, "train.steps=true"]), "train.steps: a boolean (true) is not a value")
    refused(capsys, main(["eval", "--config", cfg, "train.progress=1"]), "train.progress: must be true or false, got 1")
    twice = tmp_path / "twice.yaml"
    twice.write_text(Path(cfg).read_text() + "train:\n  steps: 3\n")
    refused(capsys, main(["eval", "--config", str(twice)]), "key 'train' appears twice")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    refused(capsys, main(["eval", "--config", str(empty)]), "is empty; omit --config for the default run")
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("train:\n  output_dir: caf\xe9\n".encode("latin-1"))
    refused(capsys, main(["train", "--config", str(binary)]), "latin1.yaml is not UTF-8 text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.yaml", "latin1.yaml", "r.yaml", "twice.yaml"]


# --- 7. replay checks its base -------------------------------------------------------------------------


def test_7_replay_refuses_another_base():
    base = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    spec, opt, key = zojax.ZOSpec(members=2), zojax.zo_sgd(0.1), jax.random.PRNGKey(0)
    log = zojax.SeedLog.new(key, spec, base)
    log.record(np.arange(2), np.ones((2, 2)), np.array([True, True]))
    assert zojax.replay(base, log, opt)["w"].shape == (3, 2)
    others = {
        "base leaf 'w' is (2, 3) float32": {"w": jnp.ones((2, 3)), "b": jnp.zeros(2)},
        "base leaf 'b' is (2,) float16": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2, jnp.float16)},
        "lack leaf 'b'": {"w": jnp.ones((3, 2))},
        "hold leaf 'c'": {**base, "c": jnp.zeros(1)},
        "hold leaf 'W'": {"W": jnp.ones((3, 2)), "b": jnp.zeros(2)},
    }
    for message, other in others.items():
        with pytest.raises(SeedLogError, match=re.escape(message)):
            zojax.replay(other, log, opt)


# --- 8. one line instead of a traceback ------------------------------------------------------------------


def test_8_unusable_output_dirs_are_one_line(run, tmp_path, capsys, monkeypatch):
    run_dir, cfg = run
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    refused(capsys, main(["train", "--config", str(cfg), f"train.output_dir={blocker}/run"]),
            f"lies under {blocker}, which is a file")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))  # root
    refused(capsys, main(["train", "--config", str(cfg), f"train.output_dir={locked}/run"]), "is read-only")
    monkeypatch.undo()
    assert blocker.read_text() == "mine" and not list(locked.iterdir())
    # checkpoints/ replaced by a file: never a restart from step 0
    shutil.rmtree(run_dir / "checkpoints")
    (run_dir / "checkpoints").write_text("not a directory")
    before = _files(run_dir)
    refused(capsys, main(["train", "--config", str(cfg), "--resume", f"train.output_dir={run_dir}"]),
            "checkpoints is a file, not the directory")
    assert _files(run_dir) == before


def test_8_a_full_disk_while_checkpointing_is_one_line(tmp_path, monkeypatch):
    import errno

    state, _ = zojax.init({"w": jnp.ones(3)}, zojax.ZOSpec(), zojax.zo_sgd(0.1), jax.random.PRNGKey(0))
    ckpt = Checkpointer(tmp_path / "ckpts", writer=True)
    ckpt.save(state, {})
    kept = _files(tmp_path / "ckpts")

    def full(*args, **kwargs):
        raise RuntimeError("async save failed") from OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.manager, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"checkpoint of step 1 .*No space left on device.*last good "
                                                   r"checkpoint is step 0.*--resume") as err:
        ckpt.save(state._replace(step=jnp.int32(1)), {})
    assert isinstance(err.value, TrainingError)  # the command line: one line, exit code 1
    assert _files(tmp_path / "ckpts") == kept and ckpt.steps() == [0]
    ckpt.close()


def test_8_generate_refuses_what_it_cannot_do_and_takes_a_prompt_with_equals(assets, tmp_path, capsys):
    cfg = str(tiny_config(assets, tmp_path / "r"))
    gen = ["generate", "--config", cfg]
    refused(capsys, main([*gen, "--temperature", "nan", "a film"]), "temperature=nan", "finite")
    refused(capsys, main([*gen, "--max-new-tokens", "3000000000", "a film"]), "max_new_tokens=3000000000")
    refused(capsys, main([*gen, "--top-k", "1000", "a film"]), "top_k=1000 exceeds the vocabulary of")
    refused(capsys, main([*gen, "--max-new-tokens", "64", "a film"]), "exceeds the model's 64 positions",
            "max_new_tokens <= 62")
    refused(capsys, main([*gen, ""]), "every prompt needs at least one token")
    refused(capsys, main([*gen, "a=b"]), "generate takes one prompt", "--prompt")
    assert main([*gen, "--max-new-tokens", "2", "--prompt", "the film=great"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_8_a_size_zero_leaf_is_fine():
    params = {"w": jnp.ones((0, 3)), "v": jnp.ones(3)}
    for noise in (zojax.Gaussian(), zojax.LowRank(rank=1)):
        spec, opt = zojax.ZOSpec(members=2, noise=noise), zojax.zo_sgd(0.1)
        state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, jax.random.PRNGKey(0))
        state, info = zojax.step(state, frozen, 1.0, loss_fn=lambda p, b: jnp.sum((p["v"] - b) ** 2) + jnp.sum(p["w"]),
                                 spec=spec, optimizer=opt)
        assert bool(info.applied) and state.params["w"].shape == (0, 3)


# --- 9. --resume may change model.unroll_layers -------------------------------------------------------------


def test_9_resume_may_unroll_the_layers_bitwise(run, done_run):
    run_dir, cfg = run
    shutil.rmtree(run_dir / "checkpoints" / "4")  # as if stopped at step 2
    train(load_config(cfg, [f"train.output_dir={run_dir}", "model.unroll_layers=true"]), resume=True, echo=_quiet)
    resumed, step = checkpoint_params(run_dir)
    expected, _ = checkpoint_params(done_run)
    assert step == 4 and load_config(run_dir / "config.yaml").model.unroll_layers
    for a, b in zip(resumed, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- 10. float16: the update bound holds for the arithmetic done ---------------------------------------------


@pytest.mark.parametrize("noise", [zojax.Gaussian(), zojax.Rademacher()])
def test_10_a_float16_update_is_formed_in_float32(noise):
    from zojax.optim import apply_update, update_bound
    from zojax.optim.gradient import dense_gradient

    params = {"w": jnp.ones(32, jnp.float16)}
    opt = zojax.zo_sgd(1e-4)
    grad = zojax.ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.array([-4.4e4], jnp.float32), noise)
    new, _ = apply_update(opt, grad, params, opt.init(params))
    z = dense_gradient(dataclasses.replace(grad, coeffs=jnp.ones(1)), params)["w"]  # the float16 direction
    expected = 1.0 - 1e-4 * -4.4e4 * np.asarray(z, np.float32)  # c z = -4.4e4 z overflows float16; lr c z does not
    assert bool(jnp.all(jnp.isfinite(new["w"])))
    # a float16 leaf without a master copy is rounded stochastically: to either neighbour, one float16 spacing
    ulp = 2.0**-10
    np.testing.assert_allclose(np.asarray(new["w"], np.float32), expected, rtol=ulp)
    assert float(jnp.max(jnp.abs(new["w"]))) <= float(update_bound(opt, grad, opt.init(params), params)) * (1 + ulp)


def test_10_float16_weights_train_in_float32_with_the_adapter_state_as_with_zo_sgd():
    """An update float16 cannot hold (lr c z of order 1e4 on weights of 6e4, near float16's largest value, 65504) lands
    in the float32 master copies both ways: applied, finite, and the adapter state folds what zo_sgd writes."""
    from zojax.optim import lozo_adapter

    noise = zojax.LowRank(rank=1, refresh_every=4)
    spec = zojax.ZOSpec(members=1, noise=noise, eps=1e-2, master_weights=True)
    params = {"w": jnp.full((4, 4), 6e4, jnp.float16).at[0].set(1.0)}

    def loss(p, batch):
        return jnp.sum(p["w"][0].astype(jnp.float32)) * batch

    weights = []
    for opt in (zojax.zo_sgd(1.0), lozo_adapter(1.0, noise=noise, members=1)):
        state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, jax.random.PRNGKey(0))
        state, info = zojax.step(state, frozen, jnp.float32(1e6), loss_fn=loss, spec=spec, optimizer=opt)
        assert bool(info.applied) and int(state.skipped) == 0
        effective = np.asarray(zojax.effective_params(opt, state.params, state.opt_state, state.key, state.step)["w"])
        assert effective.dtype == np.float32 and np.isfinite(effective).all()
        assert np.abs(effective).max() > np.finfo(np.float16).max  # float16 could not have held it
        weights.append(effective)
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-4)


# --- 11. one weight-decay rule; micro-batches equal the whole batch -----------------------------------------


def test_11_optax_chains_decay_only_what_zo_sgd_decays(assets, tmp_path):
    from zojax.run import make_optimizer, make_spec

    params = {"layers": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}, "norm": jnp.ones(3)}
    zero = jax.tree.map(jnp.zeros_like, params)
    for method, name in (("fo", "adamw"), ("mezo", "adamw"), ("mezo", "sgd")):
        cfg = load_config(tiny_config(assets, tmp_path / "r"),
                          [f"zo.method={method}", f"optim.name={name}", "optim.weight_decay=0.5", "optim.lr=0.1"])
        opt = make_optimizer(cfg, make_spec(cfg))
        grad = zero if method == "fo" else zojax.ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.zeros(1), zojax.Gaussian())
        updates, _ = opt.update(grad, opt.init(params), params)
        assert float(jnp.max(jnp.abs(updates["layers"]["w"]))) > 0, (method, name)  # the matrix decays
        assert not float(jnp.max(jnp.abs(updates["layers"]["b"]))) and not float(jnp.max(jnp.abs(updates["norm"])))


def test_11_micro_batches_of_a_token_weighted_loss_equal_the_batch(assets, tmp_path):
    from zojax import tasks
    from zojax.fo import _loss_and_grad
    from zojax.run import build_run

    run = build_run(load_config(_lm(assets, tmp_path / "lm", train__batch_size=4, train__micro_batches=2)))
    enc = run.train_set
    batch = tasks.make_batch(enc, range(4), batch_size=4, seq_len=enc.seq_len)
    micro = tasks.split_batch(batch, 2)
    tokens = [float(tasks.target_tokens(jax.tree.map(lambda x, i=i: x[i], micro))) for i in range(2)]
    assert tokens[0] != tokens[1]  # the case where a plain mean of micro-batch means is wrong
    whole, whole_grad = _loss_and_grad(run.loss_fn, run.params, None, batch, 1)
    plain, _ = _loss_and_grad(run.loss_fn, run.params, None, micro, 2)
    weighted, grad = _loss_and_grad(run.loss_fn, run.params, None, micro, 2, tasks.target_tokens)
    # a random model's token losses are all near log(vocab): the plain mean is off by little, but off
    assert abs(float(weighted) - float(whole)) < 2e-6 < 1e-5 < abs(float(plain) - float(whole))
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(whole_grad), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
