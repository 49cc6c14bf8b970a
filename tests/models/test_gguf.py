"""GGUF loading: a tiny llama.cpp-style file written here, and the real SmolLM2-135M Q4_1."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

from zojax.models import LoadError, from_pretrained, generate, gguf, llama, loading

from .hf_reference import hf_logits, hf_model, padded_batch


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf.py's LlamaModel.permute: HF's rotate-half rows -> interleaved pairs.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(tm, path, *, quantize_ffn=False):
    import gguf as gg

    c = tm.config
    w = gg.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.head_dim)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(c.num_hidden_layers):
        for hf, g in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{g}.weight"
    for name, t in tm.state_dict().items():
        a = t.float().numpy()
        if ".q_proj." in name:
            a = _llama_cpp_permute(a, c.num_attention_heads)
        elif ".k_proj." in name:
            a = _llama_cpp_permute(a, c.num_key_value_heads)
        if quantize_ffn and a.shape[-1] % 32 == 0 and ".mlp." in name:
            q = gg.quants.quantize(a, gg.GGMLQuantizationType.Q8_0)
            w.add_tensor(names[name], q, raw_shape=q.shape, raw_dtype=gg.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(names[name], a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tiny_gguf_matches_transformers(tmp_path):
    import gguf as gg

    tm = hf_model("llama")
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(tm, path, quantize_ffn=True)
    # The reference sees the same Q8_0 round trip of the MLP weights.
    with torch.no_grad():
        for n, p in tm.named_parameters():
            if ".mlp." in n and p.shape[-1] % 32 == 0:
                q = gg.quants.quantize(p.numpy(), gg.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gg.quants.dequantize(q, gg.GGMLQuantizationType.Q8_0)))
    model, config, tok = gguf.load_gguf(path, tokenizer=False)
    assert tok is None and not config.tie_word_embeddings
    # The file carries no tokenizer metadata (no special token ids) and stores eps as float32.
    want = llama.Config.from_hf(tm.config)
    assert config.rms_norm_eps == pytest.approx(want.rms_norm_eps, rel=1e-6)
    assert config == dataclasses.replace(
        want, bos_token_id=None, eos_token_id=None, pad_token_id=None, rms_norm_eps=config.rms_norm_eps
    )
    ids, mask = padded_batch(config.vocab_size)
    real = mask.astype(bool)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda m, i, k: m(i, k))(model, ids, mask))
    np.testing.assert_allclose(out[real], hf_logits(tm, ids, mask)[real], atol=1e-4)


def test_gguf_names_and_bad_files(tmp_path):
    assert gguf.hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf.hf_name("blk.12.ffn_down.weight") == "model.layers.12.mlp.down_proj.weight"
    assert gguf.hf_name("blk.0.attn_q.bias") == "model.layers.0.self_attn.q_proj.bias"
    assert gguf.hf_name("rope_freqs.weight") is None
    w = np.random.RandomState(0).randn(12, 5)
    np.testing.assert_array_equal(gguf._unpermute(_llama_cpp_permute(w, 3), 3), w)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    with pytest.raises(LoadError, match=str(bad)):
        from_pretrained(bad)


# --- the real SmolLM2-135M-Instruct (Q4_1) -------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    return from_pretrained("smollm2-135m")


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2):
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    model, config, tok = smollm2
    path = loading.smollm2_path()
    assert config.num_hidden_layers == 30 and config.tie_word_embeddings

    # Reference: transformers' own GGUF parsing, dequantisation and unpermute, into its torch
    # Llama (built from our config; transformers' parsed config is checked against ours).
    tm = AutoModelForCausalLM.from_config(config.to_hf(), attn_implementation="eager").float().eval()
    parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=tm)
    assert llama.Config.from_hf(AutoConfig.for_model(**parsed["config"])) == config
    result = tm.load_state_dict(parsed["tensors"], strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys
    tm.tie_weights()

    enc = tok(
        ["The capital of France is", "Gravity makes apples fall from trees, said"],
        padding=True,
        padding_side="left",
        return_tensors="np",
    )
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert mask[0].sum() != mask[1].sum()  # the batch really is left-padded
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda m, i, k: m(i, k))(model, ids, mask))
    ref = hf_logits(tm, ids, mask)
    real = mask.astype(bool)
    err = np.abs(out[real] - ref[real]).max() / np.abs(ref[real]).max()
    assert err < 1e-4, err  # same dequantised weights on both sides


@pytest.mark.slow
def test_smollm2_greedy_paris(smollm2):
    model, _, tok = smollm2
    text = generate(model, tok, "The capital of France is", max_new_tokens=8)
    assert "Paris" in text
    batch = generate(model, tok, ["The capital of France is", "Hi"], max_new_tokens=8)
    assert batch[0] == text  # left padding does not change the answer


@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers_gguf_tokenizer(smollm2):
    """zojax builds the GGUF tokenizer without torch; it must equal transformers' own."""
    from transformers import AutoTokenizer

    _, _, tok = smollm2
    path = loading.smollm2_path()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in ["The capital of France is", "a  weird\ttext, émojis 🎉 It was great", "<|im_start|>user\nhi<|im_end|>"]:
        assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (ref.bos_token, ref.eos_token, ref.pad_token)
