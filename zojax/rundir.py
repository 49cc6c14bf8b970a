"""The run directory, and what zojax refuses to do to it.

A run directory (``train.output_dir``) holds ``config.yaml``, ``metrics.jsonl``, ``seeds.jsonl``,
``checkpoints/``, ``curves.png`` and ``summary.json``. The checks here run before anything is
written, so a refused command leaves every file as it was:

* ``train`` starts only in a new or empty directory; ``train --resume`` continues only a run
  directory, and may change only :data:`~zojax.config.RESUMABLE_KEYS` of its config;
* one process at a time writes a run directory: ``train`` holds :class:`RunLock` (``.zojax.lock``)
  while it runs, and takes over the lock of a process that no longer runs, saying so;
* run files are replaced whole (:func:`zojax.files.write_atomic`): a kill or a full disk leaves the old file;
* ``eval``/``export``/``replay --run`` read a run's checkpoints under its own config (eval and
  export may change all but :data:`~zojax.config.WEIGHT_KEYS`, replay only what a resume may);
* ``--output`` never replaces, lies inside or contains the run directory or the files the run
  is built from, and replaces a non-empty directory only with ``--overwrite`` and only if it is
  a model directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
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
from zojax.files import write_atomic

__all__ = [
    "RunDirError", "RunLock", "check_train_dir", "check_output", "checkpoint_steps", "run_config", "write_atomic",
]

RUN_FILES = ("config.yaml", "metrics.jsonl", "seeds.jsonl", "checkpoints", "best", "summary.json", "curves.png")
RUN_DIRS = ("checkpoints", "best")
LOCK_NAME = ".zojax.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """The lock of a run directory, held by the process that writes it (``train``).

    An exclusive ``flock`` on ``<run_dir>/.zojax.lock``, which records its holder (pid, host, start).
    The kernel drops a flock when its process dies, so a lock left by a killed process is taken
    over, with a message; a lock held by a live process (or by a process on another host, which
    cannot be checked from here) is a :class:`RunDirError`. :meth:`release` removes the file.
    """

    def __init__(self, run_dir, echo=print):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.echo = echo
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> RunLock:
        try:
            self.created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while self.fd is None:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 4096).decode(errors="replace")
                    os.close(fd)
                    raise RunDirError(
                        f"{self.run_dir} is being written by another zojax process ({_holder(holder)}); wait for it "
                        "to finish or choose another train.output_dir"
                    ) from None
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:  # released and removed meanwhile: retry
                    os.close(fd)
                    continue
                try:
                    self._take_over(os.read(fd, 4096).decode(errors="replace"))
                except RunDirError:
                    os.close(fd)  # the lock file stays its holder's
                    raise
                self.fd = fd
            record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, json.dumps(record).encode(), 0)
        except OSError as e:
            self.release()
            raise RunDirError(f"train.output_dir {self.run_dir} cannot be written: {e.strerror or e}") from None
        except BaseException:
            self.release()
            raise
        return self

    def _take_over(self, text: str) -> None:
        """Refuse a recorded holder that may still run; take over (saying so) one that does not."""
        if not text.strip():
            return
        try:
            record = json.loads(text)
            pid, host = int(record["pid"]), str(record["host"])
        except (ValueError, KeyError, TypeError):
            pid, host = -1, ""
        if host and host != socket.gethostname():
            # a flock is not shared between hosts on every network file system: the holder may well run
            raise RunDirError(
                f"{self.run_dir} is locked by {_holder(text)}, another host: if that process no longer runs, "
                f"delete {self.path} and retry"
            )
        if pid > 0 and pid != os.getpid() and _pid_alive(pid):
            # the flock is free but its recorded holder runs: a file system without flock; do not guess
            raise RunDirError(
                f"{self.run_dir} is locked by {_holder(text)}, which still runs; wait for it to finish or choose "
                "another train.output_dir"
            )
        self.echo(f"taking over the stale lock of {self.run_dir} ({_holder(text)}: that process no longer runs)")

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before the flock goes: a waiter then retries on a new file
            os.close(self.fd)
            self.fd = None
        if self.created_dir and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()  # a refused run leaves no trace

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def check_writable(run_dir) -> None:
    """Refuse a ``train.output_dir`` that cannot become a directory (under a file, read-only), before writing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"train.output_dir {run_dir} is a file, not a directory")
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise RunDirError(f"train.output_dir {run_dir} lies under {existing}, which is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"train.output_dir {run_dir} cannot be written: {existing} is read-only for this user")
    for name in RUN_DIRS:  # orbax would restart from step 0 beside a file (and wait on it)
        if (run_dir / name).exists() and not (run_dir / name).is_dir():
            raise RunDirError(f"{run_dir / name} is a file, not the directory of a run's checkpoints; move it away")


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
    check_writable(run_dir)
    if run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir()):
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
