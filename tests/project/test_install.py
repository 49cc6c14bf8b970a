"""What a newcomer meets first (issue 24): ``--help`` tells the values a bare run uses, ``--version``, the
bundled configs named by name, and a wheel that carries the configs, the license and the type marker."""

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import get_args

import pytest

from zojax.cli import main
from zojax.config import CONFIGS_DIR, ConfigError, RunConfig, ZOConfig, bundled_configs, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_train_help_shows_the_bare_runs_values_and_every_choice(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    bare = load_config(None)
    assert bare.zo.method != RunConfig().zo.method  # else this test could not tell the two apart
    for key in ("zo.method", "zo.scope", "optim.lr", "train.steps", "task.max_length"):
        section, name = key.split(".")
        assert f"{key} (default {getattr(getattr(bare, section), name)!r}" in help_text, key
    methods = ", ".join(get_args(ZOConfig.model_fields["method"].annotation))
    assert f"zo.method (default 'mezo'; one of: {methods})" in help_text and "lozo, factorized" in methods
    assert "optim.schedule (default 'constant'; one of: constant, linear, cosine)" in help_text


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("zojax ")


def test_configs_are_listed_and_named_by_name(capsys, tmp_path):
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out
    for name in ("default", "opt13b_sst2_lozo", "opt13b_sst2_mezo", "opt1.3b_sst2_factorized"):
        assert name in listed and name in bundled_configs()
    by_name = load_config("opt13b_sst2_lozo")
    assert by_name == load_config(CONFIGS_DIR / "opt13b_sst2_lozo.yaml") and by_name.model.name == "facebook/opt-13b"
    assert load_config("configs/opt13b_sst2_lozo.yaml") == by_name  # the older docs' repository path
    own = tmp_path / "opt13b_sst2_lozo.yaml"  # a file of the user's wins over a bundled config of that name
    own.write_text("train: {steps: 7}\n")
    assert load_config(own).train.steps == 7
    with pytest.raises(ConfigError, match="nor a bundled config: default, es_arithmetic, es_countdown, opt1.3b"):
        load_config("opt13b_sst2_lozoo")


def test_one_copy_of_each_config():
    # the configs live in the package only: a second copy at the top level would drift
    assert not list((ROOT / "configs").glob("*.yaml"))
    assert not (ROOT / "zojax" / "default.yaml").exists()


@pytest.mark.slow
def test_wheel_carries_configs_license_and_type_marker(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "license" not in build.stderr.lower(), build.stderr[-3000:]  # setuptools' project.license warning
    (wheel,) = tmp_path.glob("zojax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "zojax/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {f"zojax/configs/{name}.yaml" for name in bundled_configs()} <= names


NOTEBOOKS = ["quickstart", "custom_model", "paper_reproduction"]


def _install_cell(name: str) -> str:
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.cell_type == "code")


def test_notebooks_have_a_colab_badge_and_no_placeholder_cells():
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert "colab.research.google.com/github/" in nb.cells[0].source and f"notebooks/{name}.ipynb" in nb.cells[0].source
        assert not any("_TBD_" in c.source for c in nb.cells), name


def test_notebook_install_cell_finds_a_source_or_says_what_to_do(tmp_path, monkeypatch):
    cells = {_install_cell(name) for name in NOTEBOOKS}
    code = _install_cell("custom_model")
    snippet = code[code.index("ZOJAX_SOURCE = "):code.index('if importlib.util.find_spec("zojax") is None:')]
    assert all(snippet in cell for cell in cells)  # one install logic in every notebook
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")

    def source(env=""):
        monkeypatch.setenv("ZOJAX_SOURCE", env)
        namespace: dict = {}
        exec("import glob, os\n" + snippet, namespace)  # noqa: S102 - the project's own notebook cell
        return namespace["zojax_source"]()

    with pytest.raises(RuntimeError, match="set ZOJAX_SOURCE above.*upload a zojax wheel"):
        source()
    (tmp_path / "pyproject.toml").write_text("")
    assert source() == ["-e", ".."]  # a clone
    (tmp_path / "notebooks" / "zojax-0.1.0-py3-none-any.whl").write_text("")
    assert source() == ["zojax-0.1.0-py3-none-any.whl"]  # an uploaded wheel wins
    assert source("git+https://example.org/zojax") == ["git+https://example.org/zojax"]
