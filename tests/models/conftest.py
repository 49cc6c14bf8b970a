"""Fixtures of the model tests: tiny random transformers checkpoints, saved once per test module."""

import functools

import pytest

from .hf_reference import hf_model, save_hf


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
    """``get(name, build=hf_model)``: the torch model ``build(name)`` and its ``save_pretrained``
    directory, built and saved once per module and name."""
    root = tmp_path_factory.mktemp("hf_checkpoints")

    @functools.cache
    def get(name, build=hf_model):
        tm = build(name)
        return tm, save_hf(tm, root, name)

    return get
