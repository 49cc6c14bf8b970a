"""The run directory, and what zojax refuses to do to it.

A run directory (``train.output_dir``) holds ``config.yaml``, ``metrics.jsonl``, ``seeds.jsonl``,
``checkpoints/``, ``curves.png`` and ``summary.json``. The checks here run before anything is
written, so a refused command leaves every file as it was:

* ``train`` starts only in a new or empty directory; ``train --resume`` continues only a run
  directory, and may change only :data:`~zojax.config.RESUMABLE_KEYS` of its config;
* ``eval``/``export``/``replay --run`` read a run's checkpoints under its own config (eval and
  export may change all but :data:`~zojax.config.WEIGHT_KEYS`, replay only what a resume may);
* ``--output`` never replaces, lies inside or contains the run directory or the files the run
  is built from, and replaces a non-empty directory only with ``--overwrite`` and only if it is
  a model directory.
"""

from __future__ import annotations

from pathlib import Path

import jax

from zojax.config import (
    RESUMABLE_KEYS,
    WEIGHT_KEYS,
    RunConfig,
    load_config,
    refused_changes,
)
from zojax.errors import ConfigError, RunDirError

__all__ = ["RunDirError", "check_train_dir", "check_output", "checkpoint_steps", "run_config"]

RUN_FILES = ("config.yaml", "metrics.jsonl", "seeds.jsonl", "checkpoints", "best", "summary.json", "curves.png")


def checkpoint_steps(run_dir: Path, kind: str = "checkpoints") -> list[int]:
    """Steps saved under ``run_dir/kind``: ``checkpoints`` (the last few) or ``best`` (train.keep_best)."""
    ckpts = run_dir / kind
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []


def _contents(run_dir: Path) -> str:
    """What a run directory holds, for messages: ``"config.yaml, checkpoints 4, 8"``."""
    held = [name for name in RUN_FILES if name != "checkpoints" and (run_dir / name).exists()]
    steps = checkpoint_steps(run_dir)
    if steps:
        held.append("checkpoints " + ", ".join(map(str, steps)))
    return ", ".join(held)


def _changes(refused: dict) -> str:
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in refused.items())


def check_train_dir(cfg: RunConfig, resume: bool) -> None:
    """Refuse a ``train`` that would overwrite a run, or a ``--resume`` that would change what it computes.

    A new or empty ``train.output_dir`` is always fine (``--resume`` then starts from step 0).
    """
    run_dir = Path(cfg.train.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"train.output_dir {run_dir} is a file, not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not (run_dir / "config.yaml").is_file():
            raise RunDirError(
                f"train.output_dir {run_dir} is not empty and holds no zojax run (no config.yaml); "
                "choose a new or empty directory"
            )
        if not resume:
            raise RunDirError(
                f"{run_dir} already holds a run ({_contents(run_dir)}): pass --resume to continue it, "
                "or choose another train.output_dir"
            )
        refused = refused_changes(load_config(run_dir / "config.yaml"), cfg, resume=True)
        if refused:
            raise RunDirError(
                f"--resume cannot change {_changes(refused)} of the run in {run_dir}: they change what its steps "
                f"compute. A resumed run may change only {', '.join(sorted(RESUMABLE_KEYS))} (train.steps only "
                "under optim.schedule=constant); for other values start a new run in another train.output_dir"
            )
    if jax.process_count() > 1:  # no process may write before every process has checked
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("zojax: run directory checked")


def run_config(run_dir, config_path, overrides: list[str], *, replay: bool) -> RunConfig:
    """The config to read a run's checkpoints with: the run's own ``config.yaml`` (or
    ``config_path``), with overrides that may not change what the checkpoints mean refused."""
    run_dir = Path(run_dir)
    stored = run_dir / "config.yaml"
    if not stored.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml: is it a zojax run directory?")
    cfg = load_config(config_path if config_path is not None else stored, overrides)
    refused = refused_changes(load_config(stored), cfg, resume=replay)
    if refused:
        allowed = (
            f"only {', '.join(sorted(RESUMABLE_KEYS))}"
            if replay
            else "all but " + ", ".join(k + "*" if k.endswith(".") else k for k in WEIGHT_KEYS)
        )
        raise RunDirError(
            f"the run in {run_dir} was trained with other values of {_changes(refused)}; its checkpoints and "
            f"seed log mean nothing under these. Reading a run may change {allowed}"
        )
    return cfg


def _relation(out: Path, path: Path) -> str | None:
    """How ``out`` overlaps ``path`` ("is", "lies inside", "contains"), or None."""
    if out == path:
        return "is"
    if path in out.parents:
        return "lies inside"
    if out in path.parents:
        return "contains"
    return None


def check_output(output, cfg: RunConfig, run_dir, overwrite: bool) -> None:
    """Refuse an ``--output`` that would delete the run, its base model or data, or another directory."""
    out = Path(output).expanduser().resolve()
    protected = {"the run directory": Path(run_dir).resolve()}
    for what, name in (("the base model", cfg.model.name), ("the data", cfg.task.source)):
        if Path(name).expanduser().exists():
            protected[what] = Path(name).expanduser().resolve()
    for what, path in protected.items():
        relation = _relation(out, path)
        if relation:
            raise RunDirError(
                f"--output {output} {relation} {what} {path}: writing it would replace files the run needs; "
                "choose a directory outside it"
            )
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--output {output} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"--output {output} exists and is not empty; pass --overwrite to replace it")
        if not ((out / "config.json").is_file() or (out / "delta.safetensors").is_file()):
            raise RunDirError(
                f"--output {output} is not a model directory (no config.json or delta.safetensors); --overwrite "
                "replaces only a model directory, so choose a new or empty one"
            )
