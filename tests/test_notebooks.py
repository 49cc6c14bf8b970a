"""The notebooks run top to bottom (small mode), are committed without outputs, and match their sources.

Small mode (``ZOJAX_NOTEBOOK_SMALL=1``) keeps the same cells with tiny step and example counts. Each notebook
runs in a fresh kernel with a temporary working directory, so its run directories never land in the repo.
"""

import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart", "custom_model", "paper_reproduction"]
TIMEOUT_PER_CELL = 600


def _make_notebooks():
    spec = importlib.util.spec_from_file_location(
        "zojax_tools_make_notebooks", ROOT / "tools" / "make_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], (
                f"{name}.ipynb cell {i} has outputs: strip them (python tools/make_notebooks.py)"
            )
            assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"
    assert nb.cells[0].cell_type == "markdown"
    # the install cell skips itself when zojax is importable (it must not reinstall during tests)
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert 'find_spec("zojax") is None' in install.source


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_source(name):
    expected = _make_notebooks().render(name)
    assert (NOTEBOOKS / f"{name}.ipynb").read_text() == expected, (
        f"notebooks/{name}.ipynb differs from tools/notebook_sources/{name}.py: run python tools/make_notebooks.py"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_small_mode(name, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    monkeypatch.setenv("ZOJAX_NOTEBOOK_SMALL", "1")
    # the kernel must import this checkout's zojax, whatever its working directory
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_PER_CELL,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    tic = time.time()
    try:
        client.execute()
    finally:
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)  # the quickstart saves a 0.5 GB model there
    elapsed = time.time() - tic
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    print(f"{name}.ipynb ran in {elapsed:.1f} s", file=sys.stderr)
