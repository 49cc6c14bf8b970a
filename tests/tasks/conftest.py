"""Fixtures of the task tests: byte-level BPE tokenizers trained on the fly, with and without a BOS token."""

import pytest

from .toy_lm import _bpe


@pytest.fixture(scope="module")
def tok():
    return _bpe(add_bos=False)


@pytest.fixture(scope="module")
def tok_bos():
    return _bpe(add_bos=True)
