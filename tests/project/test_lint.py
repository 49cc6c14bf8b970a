"""The code follows the rule set in pyproject.toml ([tool.ruff.lint])."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is in the test extra")
def test_ruff_finds_nothing():
    result = subprocess.run(["ruff", "check", "zojax", "tests", "bench", "tools"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
