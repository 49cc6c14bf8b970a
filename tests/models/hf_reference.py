"""Helpers of the model tests: tiny random transformers models (the PyTorch reference), padded batches,
reference logits. The ``hf_checkpoint`` fixture built on them is in ``conftest.py``."""

from __future__ import annotations

import os

import numpy as np
import torch

TINY = {
    "vocab_size": 67,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA
    "max_position_embeddings": 64,
}

# name -> (model_type, config overrides)
CONFIGS = {
    "llama": ("llama", {}),
    "qwen2": ("qwen2", {}),  # q/k/v biases
    "qwen3": ("qwen3", {"head_dim": 12}),  # q/k RMSNorm per head, head_dim != hidden / heads
    "mistral_window": ("mistral", {"sliding_window": 3}),
    # layer 0 full attention, layer 1 sliding (per-layer windows through the layer scan)
    "qwen2_window": ("qwen2", {"use_sliding_window": True, "sliding_window": 3, "max_window_layers": 1}),
    "llama3_tied_bias": (
        "llama",
        {
            "tie_word_embeddings": True,
            "attention_bias": True,
            "mlp_bias": True,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 5000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
}


def randomize(model: torch.nn.Module, seed: int = 1, is_norm=lambda name: "norm" in name) -> None:
    """HF's init (std 0.02, unit norms, zero biases) gives near-constant logits that hide bugs.

    Parameters named as ``is_norm`` says get scales near 1, matrices unit-variance rows, the rest
    (embeddings, biases) noise of std 0.5.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if is_norm(name):
                p.copy_(1.0 + 0.2 * noise)
            elif p.ndim == 2 and "embed" not in name:
                p.copy_(noise / p.shape[1] ** 0.5)
            else:
                p.copy_(0.5 * noise)


def hf_model(name: str, seed: int = 1):
    """A random float32 torch ``*ForCausalLM`` for ``CONFIGS[name]`` (eager attention)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, extra = CONFIGS[name]
    cfg = AutoConfig.for_model(model_type, **TINY, **extra)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    randomize(model, seed)
    return model


def save_hf(model, root, name: str, **kwargs) -> str:
    """``model.save_pretrained(root/name)``; returns the directory."""
    path = os.path.join(str(root), name)
    model.save_pretrained(path, **kwargs)
    return path


def padded_batch(vocab: int, seq: int = 7, seed: int = 0):
    """ids/mask (3, seq): a left-padded row, a right-padded row and a full row."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab, (3, seq)).astype(np.int32)
    mask = np.ones((3, seq), np.int32)
    mask[0, :3] = 0  # left padding
    mask[1, -2:] = 0  # right padding
    return ids, mask


def hf_logits(model, ids, mask) -> np.ndarray:
    """Torch logits with HF generate's position ids (cumsum of the mask), as zojax uses."""
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(pos, dtype=torch.long),
        )
    return out.logits.float().numpy()
