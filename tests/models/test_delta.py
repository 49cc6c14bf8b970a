"""zojax.models' deltas: only the trained leaves, tied to the base weights by a hash (issue 24)."""

import os
import stat

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import LlamaConfig

from zojax.models import DeltaError, apply_delta, llama, load_delta, save_delta, save_pretrained, weights_hash
from zojax.models.delta import DELTA_FILE, param_names


def _model(seed=0):
    hf = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return llama.Model(llama.Config.from_hf(hf), rngs=nnx.Rngs(seed))


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_delta_round_trips_onto_its_base_and_only_there(tmp_path, umask_022):
    base = _model()
    names = param_names(base)
    assert "norm/scale" in names
    base_hash = weights_hash(base)
    assert weights_hash(_model()) == base_hash != weights_hash(_model(seed=1))
    trained = {"norm/scale": jnp.linspace(0.5, 1.5, 16)}
    file = save_delta(tmp_path / "delta", trained, base_model="tiny", base_hash=base_hash)
    assert file.name == DELTA_FILE and file.stat().st_size < 1024  # the trained leaf only
    assert _mode(file.parent) == 0o755 and _mode(file) == 0o644
    tensors, meta = load_delta(file.parent)
    assert list(tensors) == ["norm/scale"] and meta["base_model"] == "tiny" and meta["base_sha256"] == base_hash

    fresh = apply_delta(_model(), file.parent)
    np.testing.assert_array_equal(fresh.norm.scale.value, trained["norm/scale"])
    untouched = nnx.state(_model(), nnx.Param)
    np.testing.assert_array_equal(nnx.state(fresh, nnx.Param)["embed_tokens"]["embedding"].value,
                                  untouched["embed_tokens"]["embedding"].value)

    with pytest.raises(DeltaError, match="trained from 'tiny'.*load the delta's base model"):
        apply_delta(_model(seed=1), file)
    with pytest.raises(FileExistsError):
        save_delta(tmp_path / "delta", trained, base_model="tiny", base_hash=base_hash)


def test_bad_deltas_are_refused(tmp_path):
    base = _model()
    h = weights_hash(base)
    with pytest.raises(DeltaError, match="no parameter 'nope'"):
        apply_delta(base, save_delta(tmp_path / "a", {"nope": jnp.ones(3)}, base_model="tiny", base_hash=h))
    with pytest.raises(DeltaError, match=r"norm/scale has shape \(3,\)"):
        apply_delta(base, save_delta(tmp_path / "b", {"norm/scale": jnp.ones(3)}, base_model="tiny", base_hash=h))
    with pytest.raises(DeltaError, match="no delta at"):
        load_delta(tmp_path / "missing")
    save_pretrained(base, directory=tmp_path / "hf")
    with pytest.raises(DeltaError, match="not a zojax delta"):
        load_delta(tmp_path / "hf" / "model.safetensors")


def test_exported_model_directories_are_0755(tmp_path, umask_022):
    out = save_pretrained(_model(), directory=tmp_path / "hf")
    assert _mode(out) == 0o755
