"""The notebooks run top to bottom (small mode), are committed without outputs, and match their sources.

Each notebook is built by jupytext from its percent-format source in tools/notebook_sources/
(see tools/README.md).

Small mode (``ZOJAX_NOTEBOOK_SMALL=1``) keeps the same cells with tiny step and example counts. Each notebook
runs in a fresh kernel with a temporary working directory, so its run directories never land in the repo.
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.combine import combine_inputs_with_outputs

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = ROOT / "tools" / "notebook_sources"
NAMES = ["quickstart", "custom_model", "paper_reproduction", "es_rewards"]
TIMEOUT_PER_CELL = 600
REBUILD = "jupytext --update --to ipynb -o notebooks/{name}.ipynb tools/notebook_sources/{name}.py"


def jupytext_build(name: str) -> str:
    """What ``REBUILD`` writes: the source's cells and metadata, with the committed notebook's cell ids."""
    source = jupytext.read(SOURCES / f"{name}.py", fmt="py:percent")
    committed = NOTEBOOKS / f"{name}.ipynb"
    if committed.exists():  # --update: keep the ids (and outputs, which must be none) of unchanged cells
        source = combine_inputs_with_outputs(source, nbformat.read(committed, as_version=4))
    text = jupytext.writes(source, fmt="ipynb")
    return text if text.endswith("\n") else text + "\n"  # jupytext.write ends the file with a newline


def _without_ids(text: str) -> dict:
    nb = json.loads(text)
    for cell in nb["cells"]:
        cell.pop("id", None)
    return nb


def test_notebook_names_match_the_sources():
    assert sorted(NAMES) == sorted(p.stem for p in SOURCES.glob("*.py"))
    assert sorted(NAMES) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], (
                f"{name}.ipynb cell {i} has outputs: strip them ({REBUILD.format(name=name)})"
            )
            assert cell.execution_count is None, f"{name}.ipynb cell {i} has an execution count"
    assert nb.cells[0].cell_type == "markdown"
    # the install cell skips itself when zojax is importable (it must not reinstall during tests)
    install = next(c for c in nb.cells if c.cell_type == "code")
    assert 'find_spec("zojax") is None' in install.source


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_source(name):
    committed = (NOTEBOOKS / f"{name}.ipynb").read_text()
    stale = f"notebooks/{name}.ipynb differs from its source: run {REBUILD.format(name=name)}"
    assert committed == jupytext_build(name), stale
    # nothing kept from the committed file but the cell ids (--update would keep stray notebook metadata)
    fresh = jupytext.writes(jupytext.read(SOURCES / f"{name}.py", fmt="py:percent"), fmt="ipynb")
    assert _without_ids(committed) == _without_ids(fresh), stale


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
