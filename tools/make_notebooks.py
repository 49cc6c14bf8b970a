"""Build notebooks/*.ipynb from the cell sources in tools/notebook_sources/.

    python tools/make_notebooks.py           # rewrite the notebooks (outputs stripped)
    python tools/make_notebooks.py --check   # exit 1 if a committed notebook differs

Each source file is plain Python in the "percent" format: a line ``# %% [markdown]`` starts a
markdown cell (its lines are ``# ``-commented), a line ``# %%`` starts a code cell. The notebooks
are written without outputs or execution counts and with stable cell ids, so regenerating them is
a no-op unless a source changed. tests/test_notebooks.py executes them (ZOJAX_NOTEBOOK_SMALL=1)
and checks that the committed files match these sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tools" / "notebook_sources"
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["quickstart", "custom_model", "paper_reproduction"]

METADATA = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
    "accelerator": "GPU",  # Colab: offer a GPU runtime (the notebooks also run on a CPU)
    "colab": {"provenance": []},
}


def parse_cells(text: str) -> list[tuple[str, str]]:
    """``(kind, source)`` pairs from a percent-format script."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            cells.append((kind, []))
            continue
        if not cells:
            if line.strip() and not line.startswith("#"):
                raise ValueError("code before the first '# %%' marker")
            continue  # a header comment before the first cell
        kind, lines = cells[-1]
        if kind == "markdown":
            if line.strip() and not line.startswith("#"):
                raise ValueError(f"markdown cell line is not commented: {line!r}")
            line = line[2:] if line.startswith("# ") else line[1:]
        lines.append(line)
    out = []
    for kind, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines:
            out.append((kind, "\n".join(lines)))
    return out


def build(name: str) -> nbformat.NotebookNode:
    cells = []
    for i, (kind, source) in enumerate(parse_cells((SOURCES / f"{name}.py").read_text())):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = make(source)
        cell["id"] = f"{name.replace('_', '-')}-{i:02d}"
        cells.append(cell)
    nb = nbformat.v4.new_notebook(cells=cells, metadata=METADATA)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(name)) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stale = []
    for name in NAMES:
        path = NOTEBOOKS / f"{name}.ipynb"
        text = render(name)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python tools/make_notebooks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
