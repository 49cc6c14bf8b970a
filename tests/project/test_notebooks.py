"""The notebooks run top to bottom (small mode), are committed with the outputs of such a run (what GitHub and
Colab show), and match their sources.

Each notebook is built by jupytext from its percent-format source in tools/notebook_sources/
(see tools/README.md).

Small mode (``ZOJAX_NOTEBOOK_SMALL=1``) keeps the same cells with tiny step and example counts. Each notebook
runs in a fresh kernel with a temporary working directory, so its run directories never land in the repo.
"""

import json
import shutil
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from jupytext.combine import combine_inputs_with_outputs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import run_notebooks  # noqa: E402  (tools/ is not a package)

NOTEBOOKS = ROOT / "notebooks"
SOURCES = ROOT / "tools" / "notebook_sources"
NAMES = ["quickstart", "custom_model", "paper_reproduction", "es_rewards"]
REBUILD = "jupytext --update --to ipynb -o notebooks/{name}.ipynb tools/notebook_sources/{name}.py"
RERUN = "python tools/run_notebooks.py {name}"


def jupytext_build(name: str) -> str:
    """What ``REBUILD`` writes: the source's cells and metadata, with the committed notebook's cell ids."""
    source = jupytext.read(SOURCES / f"{name}.py", fmt="py:percent")
    committed = NOTEBOOKS / f"{name}.ipynb"
    if committed.exists():  # --update: keep the ids and outputs of unchanged cells
        source = combine_inputs_with_outputs(source, nbformat.read(committed, as_version=4))
    text = jupytext.writes(source, fmt="ipynb")
    return text if text.endswith("\n") else text + "\n"  # jupytext.write ends the file with a newline


def _inputs(text: str) -> dict:
    """A notebook's cells and metadata without cell ids and without what running it adds."""
    nb = json.loads(text)
    for cell in nb["cells"]:
        cell.pop("id", None)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def test_notebook_names_match_the_sources():
    assert sorted(NAMES) == sorted(p.stem for p in SOURCES.glob("*.py"))
    assert sorted(NAMES) == sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_with_the_outputs_of_one_run(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    rerun = f"{name}.ipynb: rerun it ({RERUN.format(name=name)})"
    # one kernel, top to bottom, every cell: execution counts 1, 2, 3, ...
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), rerun
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], rerun
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}.ipynb shows no plot: {rerun}"
    text = json.dumps(outputs)
    for local in ("/tmp/", "/home/", "/root/", "/work/"):
        assert local not in text, f"{name}.ipynb's outputs hold a machine-specific path ({local})"
    assert nb.cells[0].cell_type == "markdown" and "small mode" in nb.cells[0].source
    # the install cell skips itself when zojax is importable (it must not reinstall during tests)
    assert 'find_spec("zojax") is None' in code[0].source


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_source(name):
    committed = (NOTEBOOKS / f"{name}.ipynb").read_text()
    stale = f"notebooks/{name}.ipynb differs from its source: run {REBUILD.format(name=name)}"
    assert committed == jupytext_build(name), stale
    # nothing kept from the committed file but the cell ids and outputs (--update would keep stray metadata)
    fresh = jupytext.writes(jupytext.read(SOURCES / f"{name}.py", fmt="py:percent"), fmt="ipynb")
    assert _inputs(committed) == _inputs(fresh), stale


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_small_mode(name, tmp_path):
    """A run in a fresh kernel (a failing cell raises nbclient's CellExecutionError, naming the cell); it draws
    its plots in the cells whose committed outputs show them."""
    tic = time.time()
    try:
        executed = run_notebooks.run_notebook(NOTEBOOKS / f"{name}.ipynb", tmp_path)
    finally:
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)  # the quickstart saves a 0.5 GB model there
    print(f"{name}.ipynb ran in {time.time() - tic:.1f} s", file=sys.stderr)

    def plots(nb):
        return [any("image/png" in o.get("data", {}) for o in c.outputs) for c in nb.cells if c.cell_type == "code"]

    assert plots(executed) == plots(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4))
