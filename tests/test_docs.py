"""docs/api.md is generated from the docstrings (docs/gen_api.py) and must never go stale."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "docs" / "gen_api.py"
API_MD = ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
def gen_api():
    spec = importlib.util.spec_from_file_location("zojax_docs_gen_api", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(gen_api):
    return gen_api.render()


def test_api_md_is_current(rendered):
    assert API_MD.exists(), "docs/api.md is missing: run python docs/gen_api.py"
    assert API_MD.read_text() == rendered, "docs/api.md is stale: run python docs/gen_api.py"


def test_api_md_is_deterministic(gen_api, rendered):
    assert gen_api.render() == rendered
    assert not re.search(r" at 0x[0-9a-f]+", rendered), "a memory address leaked into docs/api.md"
    assert str(ROOT) not in rendered, "a local path leaked into docs/api.md"


def test_every_public_name_is_documented(rendered):
    import zojax
    import zojax.models
    import zojax.tasks

    for module in (zojax, zojax.models, zojax.tasks):
        for name in module.__all__:
            assert f"`{module.__name__}.{name}`" in rendered, (
                f"{module.__name__}.{name} is missing from docs/api.md"
            )
    for command in ("train", "eval", "replay", "export"):
        assert f"### `zojax {command}`" in rendered


SENTINEL = object()


def test_default_values_are_formatted_without_addresses(gen_api):
    import jax.numpy as jnp

    def f(a, fn=len, dtype=jnp.float32, obj=SENTINEL, lam=lambda x: x):
        pass

    sig = gen_api.format_signature("f", f)
    assert "0x" not in sig
    assert "fn=len" in sig and "dtype=jax.numpy.float32" in sig and "obj=<object>" in sig


def test_docstrings_become_markdown(gen_api):
    doc = """Summary line.

    Args:
      x: the input, with a :class:`~zojax.nn.Perturbed` and ``code``;
        continued here.
      y (int): another.

    >>> 1 + 1
    2
    """
    import inspect

    md = gen_api.docstring_to_md(inspect.cleandoc(doc))
    assert "- `x`: the input, with a `zojax.nn.Perturbed` and `code`; continued here." in md
    assert "- `y` (int): another." in md
    assert "```pycon\n>>> 1 + 1\n2\n```" in md
