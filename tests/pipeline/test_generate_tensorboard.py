"""``zojax generate`` and the TensorBoard event files of a run (issue 15, item 7), on the tiny random Llama
and local dataset (the finished 4-step run ``done_run`` of conftest.py)."""

import struct

from zojax.cli import main

from .runs import metrics, refused


def _generated(capsys, *argv) -> str:
    rc = main(["generate", *argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out


def test_generate_greedy_is_deterministic(run, capsys):
    run_dir, _ = run
    a = _generated(capsys, "--run", str(run_dir), "It was", "--max-new-tokens", "6")
    b = _generated(capsys, "--run", str(run_dir), "--max-new-tokens", "6", "It was")
    assert a.strip() and a == b


def test_generate_sampled_follows_the_seed(run, capsys):
    run_dir, _ = run
    argv = ["--run", str(run_dir), "It was", "--max-new-tokens", "8", "--temperature", "1.5", "--top-k", "5"]
    a = _generated(capsys, *argv, "--seed", "1")
    assert a.strip() and a == _generated(capsys, *argv, "--seed", "1")


def test_generate_refuses_a_bad_run_and_bad_options(run, tmp_path, capsys):
    run_dir, _ = run
    refused(capsys, main(["generate", "--run", str(tmp_path / "missing"), "It was"]), "missing")
    refused(capsys, main(["generate", "--run", str(run_dir), "It was", "--temperature", "-1"]), "--temperature")
    refused(capsys, main(["generate", "--run", str(run_dir)]), "one prompt")


def _events(path):
    """Scalar (tag, step, value) records of a TensorBoard event file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    data, i, out = path.read_bytes(), 0, []
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
        out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_tensorboard_events_hold_the_metrics(done_run):
    files = sorted((done_run / "tensorboard").glob("events.out.tfevents.*"))
    assert files
    scalars = [s for f in files for s in _events(f)]
    records = metrics(done_run)
    train = [r for r in records if r["kind"] == "train"]
    assert train
    got = {(step, round(value, 4)) for tag, step, value in scalars if tag == "train/loss"}
    assert got == {(r["step"], round(r["loss"], 4)) for r in train}
    assert any(tag == "eval/test/loss" for tag, _, _ in scalars)
