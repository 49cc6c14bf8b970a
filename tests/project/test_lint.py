"""The code follows the rule set in pyproject.toml ([tool.ruff.lint]) and type-checks ([tool.mypy])."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the test extra")
def test_ruff_finds_nothing():
    result = subprocess.run(["ruff", "check", "zojax", "tests", "bench", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


def test_mypy_finds_nothing():
    pytest.importorskip("mypy", reason="mypy is in the test extra")
    # files and options: [tool.mypy] in pyproject.toml (a cold run takes about 20 s, a cached one a few)
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
