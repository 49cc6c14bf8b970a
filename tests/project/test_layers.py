"""The layers of the house: ``import zojax`` stays a library (no CLI, no config schema), and every
refusal of the user's input is one :class:`zojax.errors.UserError` family."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import zojax.errors as errors

ROOT = Path(__file__).resolve().parents[2]

_IMPORT_SCRIPT = """
import sys
import zojax
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "transformers")
               or m in ("zojax.cli", "zojax.config", "zojax.train"))
print(heavy)
"""


def test_import_zojax_loads_neither_the_cli_nor_the_config_schema():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"import zojax loaded {out.stdout.strip()}"


def test_every_refusal_is_a_user_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert set(errors.__all__) == {c.__name__ for c in classes}
    runtime = {errors.TrainingError, errors.NonFiniteError, errors.CheckpointWriteError}  # a run that cannot go on, not the user's input
    for cls in classes:
        assert issubclass(cls, errors.UserError) != (cls in runtime), cls
