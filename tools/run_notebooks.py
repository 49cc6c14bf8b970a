"""Run the notebooks top to bottom in small mode and save their outputs into notebooks/ (what GitHub and
Colab show before anyone runs them).

    python tools/run_notebooks.py [NAME ...]

Each runs in a fresh kernel with a temporary working directory (its run directories never land in the
repo) and with this checkout's zojax importable. Small mode (``ZOJAX_NOTEBOOK_SMALL=1``) keeps the cells
and shrinks the step and example counts; each notebook says so above its outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from jupytext.combine import combine_inputs_with_outputs
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = ROOT / "tools" / "notebook_sources"
TIMEOUT_PER_CELL = 600


def run_notebook(path: Path, workdir: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` executed in small mode in ``workdir`` (raises on a failing cell)."""
    nb = nbformat.read(path, as_version=4)
    env = {"ZOJAX_NOTEBOOK_SMALL": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        # no timing metadata: the notebook stays what its source builds, plus outputs
        NotebookClient(nb, timeout=TIMEOUT_PER_CELL, kernel_name="python3", record_timing=False,
                       resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _local(text: str, workdir: Path) -> str:
    return text.replace(str(workdir), ".").replace(str(ROOT), ".")


def scrub(nb: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """Outputs a reader should see: no stderr (the host's warnings and compiler alarms, not results), and the
    temporary directory and the checkout as ``.`` (no machine-specific paths in the repository)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
        for out in cell.outputs:
            if "text" in out:
                out["text"] = _local(out["text"], workdir)
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = _local(value, workdir)
    return nb


def with_source(name: str, executed: nbformat.NotebookNode) -> str:
    """The notebook its source builds (``jupytext --update``), carrying the executed cells' outputs."""
    source = jupytext.read(SOURCES / f"{name}.py", fmt="py:percent")
    text = jupytext.writes(combine_inputs_with_outputs(source, executed), fmt="ipynb")
    return text if text.endswith("\n") else text + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    for name in names:
        path = NOTEBOOKS / f"{name}.ipynb"
        tic = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp).resolve()
            nb = scrub(run_notebook(path, workdir), workdir)
        path.write_text(with_source(name, nb))
        print(f"{name}.ipynb: ran in {time.time() - tic:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
