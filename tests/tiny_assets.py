"""A tiny random Llama with a word-level tokenizer, saved as an HF directory, and a tiny sentiment JSONL set.

Shared by the pipeline tests (the ``assets`` fixture of ``tests/pipeline/conftest.py``) and the mesh
worker of ``tests/engine/test_parallel.py``, which runs as a script in a subprocess and so imports this
module rather than a fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

POSITIVE = ["wonderful", "delightful", "great", "fun", "moving", "charming", "superb", "brilliant"]
NEGATIVE = ["boring", "awful", "dull", "mess", "tedious", "clumsy", "bland", "terrible"]
FILLER = ["the", "film", "was", "a", "plot", "and", "story", "with", "actors", "it"]


def sentences(n: int, seed: int, movie: bool = True) -> list[dict]:
    """``n`` rows: four filler words and two of the label's sentiment, shuffled; ``movie`` adds a column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, 4)) + list(rng.choice(POSITIVE if label else NEGATIVE, 2))
        rng.shuffle(words)
        row = {"text": " ".join(words), "sentiment": "pos" if label else "neg"}
        if movie:
            row["movie"] = f"m{i % 17}"
        rows.append(row)
    return rows


def _save_tiny_llama(root: Path, tok, vocab_size: int, *, max_positions: int, tie: bool) -> None:
    """Save ``root/model``: a 2-layer random Llama (GQA) with the word-level tokenizer ``tok``."""
    from flax import nnx
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from zojax.models import llama, save_pretrained

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    hf = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=tie,
    )
    config = llama.Config.from_hf(hf)
    save_pretrained(llama.Model(config, rngs=nnx.Rngs(0)), config, root / "model", tokenizer)


def make_assets(
    root: Path, *, rows: int = 240, movie: bool = True, vocab_size: int | None = None, tie: bool = True
) -> Path:
    """Write ``root/model`` (a 2-layer random Llama, GQA) and ``root/data.jsonl``; returns ``root``.

    ``vocab_size`` pads the word vocabulary with ``<extraN>`` tokens (e.g. to a size a mesh axis
    divides); ``tie`` ties the LM head to the embedding.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    root = Path(root)
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["It", "was", "great", "terrible"]))
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    for i in range(len(vocab), vocab_size or 0):
        vocab[f"<extra{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    _save_tiny_llama(root, tok, len(vocab), max_positions=64, tie=tie)
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentences(rows, 0, movie=movie)))
    return root


CHARS = "0123456789+-*/()<>=?:.,[] \nabcdefghijklmnopqrstuvwxyzAQUW"


def make_char_assets(root: Path) -> Path:
    """Write ``root/model``: a 2-layer random Llama with a character-level tokenizer (digits, operators,
    lower-case letters), for the reward tasks, whose prompts and answers are arithmetic; returns ``root``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    root = Path(root)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    _save_tiny_llama(root, tok, len(vocab), max_positions=256, tie=True)
    return root
