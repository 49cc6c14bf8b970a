"""What a run reports: the metrics JSON-lines (+ TensorBoard, + Weights & Biases), the curves, the peak memory."""

from __future__ import annotations

import json
import os
import resource
import socket
from pathlib import Path

import jax

from zojax import parallel
from zojax.errors import ConfigError
from zojax.files import write_atomic
from zojax.seedlog import read_jsonl

__all__ = ["MetricsWriter", "plot_curves", "peak_memory_mb"]


def _wandb_mode() -> str:
    """``WANDB_MODE`` if set; otherwise online when W&B's server answers within 2 s, else offline (the
    run is then synced later with ``wandb sync``), so a run without network never waits on it."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        socket.create_connection(("api.wandb.ai", 443), timeout=2).close()
    except OSError:
        return "offline"
    return "online"


def _wandb_run(run_dir: Path, project: str, config: dict | None):
    """A W&B run for ``run_dir``: its id is kept in ``run_dir/wandb_id`` so that ``--resume`` continues
    the same W&B run."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(f"train.wandb={project!r} needs the wandb package: pip install wandb") from None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
    write_atomic(id_file, run_id)
    return wandb.init(project=project, id=run_id, resume="allow", dir=str(run_dir), config=config,
                      name=run_dir.name, mode=_wandb_mode())


def _scalars(record: dict) -> dict[str, float]:
    """A record's numbers tagged by kind and split (``train/loss``, ``eval/test/accuracy``)."""
    prefix = record.get("kind", "train") + (f"/{record['split']}" if "split" in record else "")
    return {f"{prefix}/{k}": v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MetricsWriter:
    """Metrics JSONL (+ TensorBoard scalars under ``tensorboard/``, + a Weights & Biases run of project
    ``wandb``); only process 0 writes."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool = True, wandb: str | None = None,
                 config: dict | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = parallel.is_main_process()
        self.tb = None
        self.wandb = None
        if not self.enabled:
            return
        records = []
        if resume_step is not None and self.path.exists():
            # keep only what happened up to the checkpoint we resume from (a torn last line is dropped)
            records = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))
        if tensorboard:
            from tensorboardX import SummaryWriter

            # a resume appends a new event file; TensorBoard shows the later value of a repeated step
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10)
        if wandb:
            self.wandb = _wandb_run(run_dir, wandb, config)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:  # closed (so flushed) per record: a kill loses at most a torn last line
            f.write(json.dumps(record) + "\n")
        scalars = _scalars(record)
        if self.tb is not None:
            for tag, v in scalars.items():
                self.tb.add_scalar(tag, v, record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None

    def records(self) -> list[dict]:
        return read_jsonl(self.path) if self.path.exists() else []


def plot_curves(records: list[dict], path: Path) -> None:
    # a Figure without pyplot: no backend switch, so a notebook's own plots still show after a run
    from matplotlib.figure import Figure

    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval" and "accuracy" in r]
    fig = Figure(figsize=(10, 3.8))
    a, b = fig.subplots(1, 2)
    steps = [r["step"] for r in train]
    if train and "reward_mean" in train[0]:  # a reward task (zojax.run.reward): its loss is -reward
        for key, label in (("reward_mean", "population mean"), ("reward_max", "best member"),
                           ("reward_centre", "mean member")):
            a.plot(steps, [r[key] for r in train], lw=1, label=label)
        a.set(xlabel="step", ylabel="reward", title="train reward")
        a.legend()
    else:
        a.plot(steps, [r["loss"] for r in train], lw=1)
        a.set(xlabel="step", ylabel="train loss (mean of ±eps)", title="train loss")
    for split in sorted({r["split"] for r in evals}):
        pts = [r for r in evals if r["split"] == split]
        b.plot([r["step"] for r in pts], [r["accuracy"] for r in pts], "o-", label=split)
    b.set(xlabel="step", ylabel="accuracy", title="evaluation")
    if evals:
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def peak_memory_mb() -> float:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s.get("peak_bytes_in_use")]
    if peaks:
        return max(peaks) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
