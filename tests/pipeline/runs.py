"""Helpers shared by the pipeline tests: run configs on the tiny assets, a run's trained weights, refusals.

The fixtures built on them (``assets``, ``done_run``, ``run``) are in ``conftest.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import yaml

from zojax.config import load_config


def write_config(assets, out, **over) -> Path:
    """A 12-step LOZO run of the tiny Llama on the tiny dataset, written next to ``out`` as ``out.yaml``;
    ``section__name=value`` overrides a key."""
    cfg = {
        "model": {"name": str(assets / "model")},
        "task": {
            "name": "sst2", "source": str(assets / "data.jsonl"), "columns": {"sentence": "text", "label": "sentiment"},
            "label_map": {"neg": 0, "pos": 1}, "num_train": 120, "num_dev": 40, "num_test": 60, "max_length": 16,
        },
        "zo": {"method": "lozo", "rank": 2, "refresh_every": 4, "members": 2, "eps": 1e-2, "scope": "all"},
        "optim": {"name": "zo_sgd", "lr": 2e-3},
        "train": {
            "steps": 12, "batch_size": 8, "steps_per_call": 4, "eval_every": 8, "checkpoint_every": 4,
            "output_dir": str(out), "progress": False,
        },
    }
    for key, value in over.items():
        section, name = key.split("__")
        cfg[section][name] = value
    path = Path(str(out) + ".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_config(assets, out, **over):
    """A config for 4 steps in calls of 2, checkpoints at steps 2 and 4."""
    over = {"train__steps": 4, "train__steps_per_call": 2, "train__checkpoint_every": 2, "train__eval_every": 0, **over}
    return write_config(assets, out, **over)


def metrics(run_dir) -> list[dict]:
    """Every record of a run's metrics.jsonl (each line must be JSON)."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def checkpoint_params(run_dir):
    """The leaves of the weights ``zojax eval --run`` reads (the latest checkpoint, or train.keep_best's), and their step."""
    from zojax.run import build_run, trained_params

    cfg = load_config(Path(run_dir) / "config.yaml")
    params, step = trained_params(build_run(cfg), run_dir)
    return jax.tree.leaves(params), step


def refused(capsys, rc, *fragments, code=2) -> str:
    """Assert a refusal: the exit code, one error line holding ``fragments``, no traceback; returns the line."""
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
