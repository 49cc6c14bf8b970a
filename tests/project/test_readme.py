"""The README's library examples run as written (issue 24: a newcomer copies them first)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _library_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the library", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_library_examples_run(capsys):
    blocks = _library_blocks()
    assert len(blocks) >= 2, "the plain-pytree and the Flax NNX examples"
    namespace: dict = {}
    for block in blocks:  # later blocks reuse the earlier ones' names, as a reader would
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    assert namespace["model_loss"] < namespace["infos"].loss[0]  # the NNX example trains
