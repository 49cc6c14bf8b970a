"""Every measured number in the README and docs/ is read from a results file (issue 24).

A section that reports measurements starts with ``<!-- numbers: bench/results/a.json ... -->``; from there to
the next heading (or the next such line), every number with a decimal point and every number followed by ``%``,
``x`` or ``s`` (outside code) must be a value of one of those files at the precision shown (as a fraction or a
percentage). A number that disagrees with its results file fails here, naming both.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if p.name != "api.md")]
MARKER = re.compile(r"<!-- numbers: (.*?) -->")
HEADING = re.compile(r"^#{1,6} ")
# 71.8, 1.20x, 58.4%, 304 s, 3.26x; not 1e-5, 240 steps, v5e-32 (code spans and link targets are removed first)
NUMBER = re.compile(r"(?<![\w.\-])(\d+\.\d+|\d+(?=\s?(?:%|x\b|s\b)))")


def _values(files: list[str]) -> list[float]:
    out: list[float] = []

    def walk(x):
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            out.append(float(x))
        elif isinstance(x, str):
            out.extend(float(m) for m in re.findall(r"\d+(?:\.\d+)?", x))
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for f in files:
        walk(json.loads((ROOT / f).read_text()))
    return out


def _shown_as(value: float, text: str) -> bool:
    decimals = len(text.split(".")[1]) if "." in text else 0
    shown = float(text)
    return any(abs(round(v, decimals) - shown) < 1e-9 for v in (value, 100 * value))


def _sourced_sections(text: str):
    """(files, lines) of each sourced section, code blocks dropped."""
    files, lines, in_code = None, [], False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        marker = MARKER.search(line)
        if HEADING.match(line) and not in_code or marker:
            if files:
                yield files, lines
            files, lines = (marker.group(1).split() if marker else None), []
            continue
        if files and not in_code:
            lines.append(line)
    if files:
        yield files, lines


def _numbers(line: str) -> list[str]:
    line = re.sub(r"`[^`]*`", " ", line)  # code: config values, commands
    line = re.sub(r"\]\([^)]*\)", "]", line)  # link targets
    line = re.sub(r"<!--.*?-->", " ", line)
    return NUMBER.findall(line)


@pytest.mark.parametrize("page", PAGES)
def test_every_number_agrees_with_its_results_file(page):
    text = (ROOT / page).read_text()
    problems = []
    for files, lines in _sourced_sections(text):
        for f in files:
            assert (ROOT / f).is_file(), f"{page}: {f} is not a results file"
        values = _values(files)
        for line in lines:
            for number in _numbers(line):
                if not any(_shown_as(v, number) for v in values):
                    problems.append(f"{number!r} in {line.strip()[:100]!r} is in none of {files}")
    assert not problems, f"{page}:\n" + "\n".join(problems)


def test_measured_pages_name_their_sources():
    for page in ("README.md", "docs/quality.md", "docs/benchmarks.md"):
        assert MARKER.search((ROOT / page).read_text()), page


def test_no_internal_wording():
    for page in PAGES:
        text = (ROOT / page).read_text()
        for phrase in ("target of", "is missed", "missed by", "has not run on a device yet", "_TBD_"):
            assert phrase not in text, f"{page}: {phrase!r}"
