"""What a run reports: the metrics JSON-lines (+ TensorBoard), the curves, the peak memory."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import jax

from zojax.files import write_atomic
from zojax.seedlog import read_jsonl

__all__ = ["MetricsWriter", "plot_curves", "peak_memory_mb"]


class MetricsWriter:
    """Metrics JSONL (+ TensorBoard scalars under ``tensorboard/``); only process 0 writes."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self.tb = None
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

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:  # closed (so flushed) per record: a kill loses at most a torn last line
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            # eval records are tagged by split (eval/test/loss, eval/dev/accuracy), train ones train/<key>
            prefix = record.get("kind", "train") + (f"/{record['split']}" if "split" in record else "")
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def records(self) -> list[dict]:
        return read_jsonl(self.path) if self.path.exists() else []


def plot_curves(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval" and "accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
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
    plt.close(fig)


def peak_memory_mb() -> float:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s.get("peak_bytes_in_use")]
    if peaks:
        return max(peaks) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
