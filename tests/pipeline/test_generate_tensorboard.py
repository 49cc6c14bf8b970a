"""``zojax generate`` and the TensorBoard event files of a run (issue 15, item 7), on the tiny random Llama
and local dataset (the finished 4-step run ``done_run`` of conftest.py)."""

import struct
import sys
import types

from zojax.cli import main

from .runs import metrics, refused, tiny_config


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
    assert a != _generated(capsys, *argv, "--seed", "2")  # 8 tokens from 5 each: equal by chance ~1e-5


def test_generate_refuses_a_bad_run_and_bad_options(run, tmp_path, capsys):
    run_dir, _ = run
    refused(capsys, main(["generate", "--run", str(tmp_path / "missing"), "It was"]), "missing")
    refused(capsys, main(["generate", "--run", str(run_dir), "It was", "--temperature", "-1"]), "temperature=-1.0")
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


class _FakeWandb(types.ModuleType):
    """The part of the wandb API zojax uses, recording what it is given (wandb is not a dependency)."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0
        self.util = types.SimpleNamespace(generate_id=lambda: f"id{len(self.inits)}")

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return self

    def log(self, scalars, step):
        self.logged.append((step, scalars))

    def finish(self):
        self.finished += 1


def test_wandb_gets_every_record_and_a_resume_continues_its_run(assets, tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    config = tiny_config(assets, out, train__wandb="zojax-test", train__stop_after=2)
    assert main(["train", "--config", str(config)]) == 0
    assert main(["train", "--config", str(config), "--resume", "train.stop_after=4"]) == 0
    assert [i["id"] for i in fake.inits] == ["id0", "id0"]  # the resume continues the same W&B run
    assert {i["project"] for i in fake.inits} == {"zojax-test"} and fake.inits[0]["mode"] == "offline"
    assert fake.inits[0]["config"]["train"]["wandb"] == "zojax-test" and fake.finished == 2
    train = [r for r in metrics(out) if r["kind"] == "train"]
    logged = {step: scalars["train/loss"] for step, scalars in fake.logged if "train/loss" in scalars}
    assert logged == {r["step"]: r["loss"] for r in train}


def test_wandb_without_the_package_is_one_line(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = tiny_config(assets, tmp_path / "run", train__wandb="zojax-test")
    refused(capsys, main(["train", "--config", str(config)]), "train.wandb", "pip install wandb")


def test_the_run_plot_leaves_matplotlibs_backend_alone(tmp_path):
    # a notebook's own plt.show() must still display after zojax.train has drawn curves.png
    import matplotlib

    from zojax.run.metrics import plot_curves

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_curves([{"kind": "train", "step": 1, "loss": 0.5}, {"kind": "eval", "split": "dev", "step": 1,
                                                                "accuracy": 0.6}], tmp_path / "curves.png")
        assert matplotlib.get_backend() == "svg" and (tmp_path / "curves.png").stat().st_size > 0
    finally:
        matplotlib.use(before)
