"""Fixtures of the pipeline tests: the tiny random Llama and dataset, and a finished tiny run."""

import shutil
from pathlib import Path

import pytest

from zojax.cli import main

from ..tiny_assets import make_assets
from .runs import tiny_config


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny random Llama with a word-level tokenizer, saved as an HF directory, and a JSONL dataset."""
    return make_assets(tmp_path_factory.mktemp("assets"))


@pytest.fixture(scope="module")
def done_run(assets, tmp_path_factory, worker_id):
    """A finished 4-step run, trained once even under pytest-xdist (workers share it; tests copy it)."""
    from filelock import FileLock  # a dependency of huggingface_hub

    root = tmp_path_factory.getbasetemp()
    out = (root if worker_id == "master" else root.parent) / "cli_safety_done"
    with FileLock(str(out) + ".lock"):
        if not (out / "summary.json").exists():
            shutil.rmtree(out, ignore_errors=True)
            assert main(["train", "--config", str(tiny_config(assets, out))]) == 0
    return out


@pytest.fixture
def run(done_run, tmp_path):
    """A private copy of the finished run: (run directory, its config file)."""
    copy = tmp_path / "run"
    shutil.copytree(done_run, copy)
    return copy, Path(str(done_run) + ".yaml")
