"""What the task tests share, all offline: a byte-level BPE tokenizer trained on the fly, a tiny causal LM
of the token ids (padding- and shift-invariant) with a numpy reference, and a few SST-2 and COPA examples."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from zojax import tasks as T

CORPUS = [
    "It was great. It was terrible. the movie was great, a terrible film",
    "Yes No Maybe. Does this mean that it is true? Yes or No?",
    "The man broke his toe because he dropped a hammer on his foot so it hurt.",
    "not really good, quite bad, an absolute triumph of a film",
] * 20


def _bpe(add_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    if add_bos:  # like OPT: every encoding starts with a special token
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


V, D = 400, 16


_rng = np.random.default_rng(0)


E = jnp.asarray(_rng.normal(size=(V, D)), jnp.float32)


W = jnp.asarray(_rng.normal(size=(D, V)) * 2.0, jnp.float32)


def _toy_apply(ids, mask, pos):
    """A causal "LM": position t sees the mean embedding of the real tokens up to t and token t.
    Padding (masked) tokens contribute nothing, so left/right padding give the same logits."""
    m = mask.astype(jnp.float32)[..., None]
    e = E[ids] * m
    ctx = jnp.cumsum(e, axis=1) / jnp.maximum(jnp.cumsum(m, axis=1), 1.0)
    h = jnp.tanh(ctx + e)
    h = jnp.take_along_axis(h, pos[..., None], axis=1)
    return h @ W


toy_apply = jax.jit(_toy_apply)


class _Jitted:
    """``J.option_logprobs(apply, batch)`` etc.: the library functions under one jit each (eager
    dispatch compiles every primitive for every new shape, several times slower on CPU)."""

    _cache: ClassVar[dict] = {}

    def __getattr__(self, name):
        if name not in self._cache:
            self._cache[name] = jax.jit(getattr(T, name), static_argnums=0)
        return self._cache[name]


J = _Jitted()


E_np, W_np = np.asarray(E), np.asarray(W)


def _np_logprobs(ids):
    """log-softmax of ``toy_apply`` at every position of one unpadded sequence, in numpy (no compiles)."""
    e = E_np[np.asarray(ids)]
    ctx = np.cumsum(e, axis=0) / np.arange(1, len(ids) + 1)[:, None]
    logits = np.tanh(ctx + e) @ W_np
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def reference_option_logprobs(tokenizer, prompt, full, length_norm):
    """Score one option the slow, obvious way: the unpadded full text, every position, log-softmax."""
    p = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    f = tokenizer(full, add_special_tokens=True)["input_ids"]
    n = len(f) - len(p)
    lp = _np_logprobs(f)
    toks = [lp[t - 1, f[t]] for t in range(len(f) - n, len(f))]
    return np.mean(toks) if length_norm else np.sum(toks)


SST2 = [
    {"sentence": "a great film", "label": 1},
    {"sentence": "not really good , quite bad", "label": 0},
    {"sentence": "an absolute triumph of a movie", "label": 1},
    {"sentence": "terrible", "label": 0},
    {"sentence": "it was a film", "label": 1},
]


COPA = [
    {
        "premise": "The man broke his toe.",
        "question": "cause",
        "choice1": "He dropped a hammer on his foot.",
        "choice2": "He got a hole in his sock.",
        "label": 0,
    },
    {
        "premise": "I poured water on my sleeping friend.",
        "question": "effect",
        "choice1": "My friend awoke.",
        "choice2": "I awoke.",
        "label": 0,
    },
    {
        "premise": "The film was great.",
        "question": "effect",
        "choice1": "It hurt.",
        "choice2": "The man was not really good at it.",
        "label": 1,
    },
]
