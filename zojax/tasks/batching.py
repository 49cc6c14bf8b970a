"""Tokenize task examples once, then cut static-shape batches from them.

The batch layout (:class:`Batch`) is one layout for every task, so one loss function serves them all:

============== ================ ==============================================================
field          shape            meaning
============== ================ ==============================================================
input_ids      (B, S, T) int32  S sequences per example, left padded (the text ends at T-1)
attention_mask (B, S, T) int32  1 on real tokens
positions      (B, S, P) int32  where to read logits (the model computes the LM head there only)
targets        (B, S, P, K) i32 token ids whose log-prob is read at each position
target_mask    (B, S, P, K) f32 1 where a target counts
option_mask    (B, O) bool      O = S*K; False for missing options (fewer options than O)
labels         (B,) int32       index of the correct option
weights        (B,) float32     1 for real examples, 0 for padding rows of a short batch
============== ================ ==============================================================

Option ``o`` of an example is sequence ``o // K``, target slot ``o % K``; its log-likelihood is the sum
(or, with ``length_norm``, the mean) over positions of the target log-probs. Three encodings fill it:

* ``"last"`` (the SST-2 fast path, chosen automatically when every option is ONE token continuing the
  very prompt tokens): S=1, P=1, K=O. One sequence per example (the prompt); the logits at its last token
  are read once and the O option ids gathered from them.
* ``"full"`` (multi-token or per-example options): S=O, K=1, P = longest option. Sequence ``o`` is
  prompt + option ``o``; position ``t`` predicts option token ``t``.
* ``"lm"`` (:func:`encode_lm`): S=1, K=1, P=T-1, every next token is a target; O=1.

Shapes are static: O, S, K and P are fixed per encoded dataset, T is the longest sequence of the batch
rounded up to a multiple of ``pad_multiple`` (or a fixed ``seq_len``), so jit compiles once per bucket.
Rows that only pad (short last batch, missing options) copy a real sequence, so no row is fully masked
(which can make attention produce NaN) and padding never contributes.

>>> tok = _ToyTokenizer()
>>> enc = encode_task([{"sentence": "a fine film", "label": 1}], "sst2", tok)
>>> enc.layout, enc.num_options
('last', 2)
>>> b = make_batch(enc, [0], pad_multiple=8)
>>> b.input_ids.shape, b.positions.tolist(), b.targets.shape
((1, 1, 8), [[[7]]], (1, 1, 1, 2))
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from zojax.tasks.data import DataError
from zojax.tasks.templates import Template, get_template

__all__ = [
    "Batch",
    "EncodedExample",
    "EncodedTask",
    "encode_lm",
    "encode_task",
    "iter_batches",
    "make_batch",
    "pad_batch",
    "split_batch",
    "stack_batches",
    "train_batch",
    "train_batches",
]

log = logging.getLogger(__name__)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "input_ids",
        "attention_mask",
        "positions",
        "targets",
        "target_mask",
        "option_mask",
        "labels",
        "weights",
    ],
    meta_fields=["length_norm", "padding_side"],
)
@dataclasses.dataclass(frozen=True)
class Batch:
    """A static-shape batch (see the module docstring for the fields). A pytree: stack it along a new
    leading axis for ``lax.scan`` (:func:`stack_batches`), split it into micro-batches (:func:`split_batch`).
    ``length_norm`` and ``padding_side`` are static (part of the tree structure)."""

    input_ids: Any
    attention_mask: Any
    positions: Any
    targets: Any
    target_mask: Any
    option_mask: Any
    labels: Any
    weights: Any
    length_norm: bool = True
    padding_side: str = "left"

    @property
    def batch_size(self) -> int:
        return self.labels.shape[-1]

    @property
    def num_options(self) -> int:
        return self.option_mask.shape[-1]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[-1]


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """One tokenized example. ``seqs[s]`` is a full token sequence (already truncated);
    ``offsets[s]`` (P_s,) are its read positions counted from its end (-1 = last token);
    ``targets[s]`` (P_s, K) the ids read at them."""

    seqs: tuple[np.ndarray, ...]
    offsets: tuple[np.ndarray, ...]
    targets: tuple[np.ndarray, ...]
    label: int
    num_options: int
    truncated: bool = False


@dataclasses.dataclass
class EncodedTask:
    """A tokenized dataset plus the static layout of its batches.

    ``num_truncated`` counts examples shortened to fit ``max_length`` (reported by the trainer)."""

    examples: list[EncodedExample]
    layout: str  # "last" | "full" | "lm"
    num_options: int  # O
    seqs_per_example: int  # S
    ids_per_position: int  # K
    num_positions: int  # P ("last"/"full"); for "lm" P = T - 1
    max_length: int
    pad_id: int
    length_norm: bool
    pad_multiple: int = 16
    num_truncated: int = 0
    num_demonstrations: int = 0  # k demonstrations offered to every prompt (in-context learning)
    demonstrations_dropped: int = 0  # of those, how many did not fit max_length (summed over examples)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def longest(self) -> int:
        """Longest token sequence in the dataset."""
        return max(len(s) for e in self.examples for s in e.seqs)

    @property
    def seq_len(self) -> int:
        """A T that fits every batch of this dataset (pass it as ``seq_len`` for a single compile)."""
        return _bucket(self.longest, self.pad_multiple, self.max_length)

    @property
    def labels(self) -> np.ndarray:
        return np.array([e.label for e in self.examples], np.int32)


# ---------------------------------------------------------------------------------------------------
# tokenization


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _leading_specials(tokenizer, add_bos: bool | None) -> list[int]:
    """Tokens the tokenizer itself puts first (OPT's ``</s>``, Llama's ``<s>``): MeZO encodes with special
    tokens, and its truncation keeps them. ``add_bos=None`` follows the tokenizer; True forces the BOS."""
    if add_bos is False:
        return []
    if add_bos is True:
        if tokenizer.bos_token_id is None:
            raise DataError("add_bos=True but the tokenizer has no bos_token_id")
        return [int(tokenizer.bos_token_id)]
    with_sp = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    without = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    n = len(with_sp) - len(without)
    if n > 0 and with_sp[n:][: len(without)] == without:
        return with_sp[:n]
    return []


def _pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def _bucket(n: int, multiple: int, cap: int) -> int:
    return max(1, min(cap, -(-n // multiple) * multiple)) if multiple > 1 else min(n, cap)


def _truncate_left(prefix: list[int], budget: int) -> list[int]:
    return prefix[len(prefix) - budget :] if len(prefix) > budget else prefix


def _render(examples, t: Template) -> tuple[list[tuple[str, list[str]]], list[int]]:
    """Each example's prompt and full option texts, and its label (an option index)."""
    rendered, labels = [], []
    for i, ex in enumerate(examples):
        prompt, fulls = t.render(ex)
        label = t.label(ex)
        if not 0 <= label < len(fulls):
            raise DataError(f"example {i}: label {label} is not an option index (0..{len(fulls) - 1})")
        rendered.append((prompt, fulls))
        labels.append(label)
    return rendered, labels


def _tokenize(rendered, tokenizer) -> list[tuple[list[int], list[list[int]], list[int]]]:
    """Per example: (prompt ids, [full ids], [option lengths]); every option adds tokens to the prompt."""
    # one tokenizer call for everything: fast tokenizers batch in Rust
    flat_ids = _ids(tokenizer, [s for p, fs in rendered for s in (p, *fs)])
    toks, k = [], 0
    for i, (_, fulls) in enumerate(rendered):
        p_ids, f_ids = flat_ids[k], flat_ids[k + 1 : k + 1 + len(fulls)]
        k += 1 + len(fulls)
        n_opt = [len(f) - len(p_ids) for f in f_ids]
        for j, n in enumerate(n_opt):
            if n < 1:
                raise DataError(f"example {i}: option {j} adds no tokens to the prompt: {fulls[j]!r}")
        toks.append((p_ids, f_ids, n_opt))
    return toks


def _encode_last(p_ids, f_ids, bos_ctx, budget, n_options, label, truncated) -> EncodedExample:
    """The ``last`` layout: one sequence, the prompt; each option is one token read at its last position."""
    seq = np.array(bos_ctx + _truncate_left(p_ids, budget), np.int32)
    tg = np.zeros((1, n_options), np.int32)
    tg[0, : len(f_ids)] = [f[-1] for f in f_ids]
    return EncodedExample((seq,), (np.array([-1], np.int32),), (tg,), label, len(f_ids), truncated)


def _encode_full(prefixes, f_ids, n_opt, bos_ctx, budget, label, truncated) -> EncodedExample:
    """The ``full`` layout: one sequence per option, the prompt then the option's tokens, each read where it sits."""
    seqs, offs, tgs = [], [], []
    for q, f, n in zip(prefixes, f_ids, n_opt):
        seqs.append(np.array(bos_ctx + _truncate_left(q, budget) + f[len(f) - n :], np.int32))
        # token t of the option (t = 0..n-1) sits at -(n - t) and is predicted from -(n - t) - 1
        offs.append(np.arange(-n - 1, -1, dtype=np.int32))
        tgs.append(np.array(f[len(f) - n :], np.int32)[:, None])
    return EncodedExample(tuple(seqs), tuple(offs), tuple(tgs), label, len(f_ids), truncated)


def encode_task(
    examples: Sequence[Mapping[str, Any]],
    template: str | Template,
    tokenizer,
    *,
    max_length: int = 2048,
    layout: str = "auto",
    length_norm: bool = True,
    add_bos: bool | None = None,
    pad_multiple: int = 16,
    verbalizer: Sequence[str] | None = None,
    demonstrations: Sequence[Mapping[str, Any]] = (),
    demonstration_separator: str = "\n\n",
) -> EncodedTask:
    """Tokenize classification examples with a template, as MeZO does, into an :class:`EncodedTask`.

    Option ``i``'s tokens are the last ``len(tok(full_i)) - len(tok(prompt))`` tokens of the full text
    (MeZO's ``encode_prompt``), so multi-token verbalizers and per-example options (COPA) just work.

    Args:
      examples: dicts with the template's fields and ``label``.
      template: a registered name (``"sst2"``, ``"copa"``, ...) or a :class:`Template`.
      tokenizer: any Hugging Face tokenizer.
      max_length: longest sequence. Longer examples lose tokens FROM THE LEFT of the prompt (the end,
        where the verbalizer attaches, is kept, and so is a leading BOS); they are counted in
        ``num_truncated`` and a warning is issued. All options of an example share the same truncated
        prompt (MeZO truncates each option's text separately; the two agree whenever nothing is cut).
      layout: ``"auto"`` (``"last"`` when every option of every example is one token continuing the
        prompt tokens, else ``"full"``), ``"last"`` (error if impossible) or ``"full"``.
      length_norm: score an option by the mean of its token log-probs (MeZO's training and evaluation
        both average), else by the sum. Irrelevant for single-token options.
      add_bos: ``None`` keeps the special tokens the tokenizer adds in front; True/False force.
      pad_multiple: T is rounded up to a multiple of this.
      verbalizer: replaces the template's option words.
      demonstrations: in-context learning (MeZO's ICL): each is rendered with its correct option and
        ``demonstration_separator``, and all of them, in order, precede every prompt (after the BOS). They
        are tokenized on their own and joined as ids, so a demonstration is kept whole or dropped, never
        cut: when they do not all fit ``max_length`` beside the prompt and its longest option, the ones
        farthest from the prompt are dropped first (counted in ``demonstrations_dropped``); the prompt
        itself is truncated only when it alone does not fit.
      demonstration_separator: text after each demonstration.

    >>> enc = encode_task([{"sentence": "so so", "label": 0}], "sst2", _ToyTokenizer(), layout="full")
    >>> enc.layout, enc.seqs_per_example, enc.num_positions
    ('full', 2, 1)
    """
    t = get_template(template, verbalizer)
    if len(examples) == 0:
        raise DataError("encode_task: no examples")
    if layout not in ("auto", "last", "full"):
        raise ValueError(f"layout must be 'auto', 'last' or 'full', got {layout!r}")
    bos = _leading_specials(tokenizer, add_bos)
    demo_ids = _demonstration_ids(demonstrations, t, tokenizer, demonstration_separator)

    rendered, labels = _render(examples, t)
    toks = _tokenize(rendered, tokenizer)

    fast_ok = [all(n == 1 and f[:-1] == p for f, n in zip(fs, ns)) for p, fs, ns in toks]
    if layout == "last" and not all(fast_ok):
        bad = fast_ok.index(False)
        raise DataError(
            f"layout='last' needs single-token options that continue the prompt tokens; example {bad} "
            f"has options {rendered[bad][1]!r} (use layout='full')"
        )
    use_last = layout == "last" or (layout == "auto" and all(fast_ok))
    n_options = max(len(fs) for _, fs, _ in toks)

    encoded, n_trunc, n_dropped = [], 0, 0
    for i, (p_ids, f_ids, n_opt) in enumerate(toks):
        # every option of an example sees the same prompt: cut it to fit the longest option
        budget = max_length - len(bos) - (1 if use_last else max(n_opt))
        prefixes = [p_ids] if use_last else [f[: len(f) - n] for f, n in zip(f_ids, n_opt)]
        if budget < 1 or (not bos and min(len(q) for q in prefixes) == 0):
            raise DataError(
                f"example {i}: no prompt token is left to predict the options from "
                f"(max_length={max_length}, longest option {max(n_opt)} tokens, prompt {len(p_ids)} tokens)"
            )
        truncated = max(len(q) for q in prefixes) > budget
        n_trunc += truncated
        context = _fitting_demonstrations(demo_ids, budget - max(len(q) for q in prefixes))
        n_dropped += len(demo_ids) - len(context)
        bos_ctx, budget = bos + [tok for d in context for tok in d], budget - sum(map(len, context))
        if use_last:
            item = _encode_last(p_ids, f_ids, bos_ctx, budget, n_options, labels[i], truncated)
        else:
            item = _encode_full(prefixes, f_ids, n_opt, bos_ctx, budget, labels[i], truncated)
        encoded.append(item)

    if n_trunc:
        msg = (
            f"{n_trunc} of {len(encoded)} examples are longer than max_length={max_length} tokens; "
            f"their prompts were truncated from the left"
        )
        warnings.warn(msg, stacklevel=2)
        log.info(msg)
    if use_last:
        S, K, P = 1, n_options, 1
    else:
        S, K, P = n_options, 1, max(len(o) for e in encoded for o in e.offsets)
    return EncodedTask(
        examples=encoded,
        layout="last" if use_last else "full",
        num_options=n_options,
        seqs_per_example=S,
        ids_per_position=K,
        num_positions=P,
        max_length=max_length,
        pad_id=_pad_id(tokenizer),
        length_norm=length_norm,
        pad_multiple=pad_multiple,
        num_truncated=n_trunc,
        num_demonstrations=len(demo_ids),
        demonstrations_dropped=n_dropped,
    )


def _demonstration_ids(demonstrations, template: Template, tokenizer, separator: str) -> list[list[int]]:
    """Token ids of each demonstration: its text with the correct option, then the separator."""
    texts = []
    for j, d in enumerate(demonstrations):
        _, fulls = template.render(d)
        label = template.label(d)
        if not 0 <= label < len(fulls):
            raise DataError(f"demonstration {j}: label {label} is not an option index (0..{len(fulls) - 1})")
        texts.append(fulls[label] + separator)
    return _ids(tokenizer, texts)


def _fitting_demonstrations(demo_ids: list[list[int]], room: int) -> list[list[int]]:
    """The longest tail of ``demo_ids`` whose total length fits ``room`` tokens: the demonstrations
    closest to the prompt are kept, whole.

    >>> _fitting_demonstrations([[1, 2], [3], [4, 5]], 3)
    [[3], [4, 5]]
    """
    kept, used = 0, 0
    for d in reversed(demo_ids):
        if used + len(d) > room:
            break
        kept, used = kept + 1, used + len(d)
    return demo_ids[len(demo_ids) - kept :]


def encode_lm(
    texts: Sequence[str | Mapping[str, Any]],
    tokenizer,
    *,
    max_length: int = 2048,
    add_bos: bool | None = None,
    pad_multiple: int = 16,
    field: str = "text",
) -> EncodedTask:
    """Tokenize texts for causal-LM training: every token after the first is a target.

    Texts longer than ``max_length`` keep their first ``max_length`` tokens (counted and warned). Use
    with :func:`zojax.tasks.lm_loss` (mean next-token NLL).

    >>> enc = encode_lm(["a b c"], _ToyTokenizer())
    >>> enc.layout, enc.examples[0].offsets[0].tolist(), enc.examples[0].targets[0][:, 0].tolist()
    ('lm', [-3, -2], [7, 8])
    """
    if len(texts) == 0:
        raise DataError("encode_lm: no texts")
    strs = [x if isinstance(x, str) else x[field] for x in texts]
    bos = _leading_specials(tokenizer, add_bos)
    encoded, n_trunc = [], 0
    for ids in _ids(tokenizer, strs):
        seq_ids = bos + ids
        truncated = len(seq_ids) > max_length
        n_trunc += truncated
        seq = np.array(seq_ids[:max_length], np.int32)
        L = len(seq)
        encoded.append(
            EncodedExample(
                (seq,), (np.arange(-L, -1, dtype=np.int32),), (seq[1:, None].copy(),), 0, 1, truncated
            )
        )
    if n_trunc:
        msg = f"{n_trunc} of {len(encoded)} texts are longer than max_length={max_length}; truncated"
        warnings.warn(msg, stacklevel=2)
        log.info(msg)
    return EncodedTask(
        encoded, "lm", 1, 1, 1, 0, max_length, _pad_id(tokenizer), False, pad_multiple, n_trunc
    )


# ---------------------------------------------------------------------------------------------------
# batches


def make_batch(
    enc: EncodedTask,
    indices: Sequence[int] | np.ndarray,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    pad_multiple: int | None = None,
    padding_side: str = "left",
) -> Batch:
    """The :class:`Batch` of examples ``indices`` (numpy arrays).

    Args:
      batch_size: pad to this many rows (extra rows copy the first example with weight 0), so a short
        last evaluation batch keeps the shape.
      seq_len: fixed T (error if an example is longer); default: the batch's longest sequence rounded
        up to a multiple of ``pad_multiple`` (default ``enc.pad_multiple``), capped at ``max_length``.
      padding_side: ``"left"`` (default; every text ends at T-1) or ``"right"``.

    >>> enc = encode_task([{"sentence": "good", "label": 1}], "sst2", _ToyTokenizer())
    >>> b = make_batch(enc, [0], batch_size=2)
    >>> b.weights.tolist(), b.labels.tolist(), b.option_mask.tolist()
    ([1.0, 0.0], [1, 1], [[True, True], [True, True]])
    """
    idx = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not idx:
        raise ValueError("make_batch: no indices")
    B = batch_size or len(idx)
    if len(idx) > B:
        raise ValueError(f"make_batch: {len(idx)} indices for batch_size={B}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    n_real = len(idx)
    exs = [enc.examples[i] for i in idx] + [enc.examples[idx[0]]] * (B - n_real)
    longest = max(len(s) for e in exs for s in e.seqs)
    if seq_len is None:
        T = _bucket(longest, pad_multiple or enc.pad_multiple, enc.max_length)
    else:
        T = int(seq_len)
        if longest > T:
            raise ValueError(f"make_batch: seq_len={T} is shorter than a sequence of {longest} tokens")
    S, K, n_opt = enc.seqs_per_example, enc.ids_per_position, enc.num_options
    P = T - 1 if enc.layout == "lm" else enc.num_positions

    ids = np.full((B, S, T), enc.pad_id, np.int32)
    mask = np.zeros((B, S, T), np.int32)
    pos = np.zeros((B, S, P), np.int32)
    tgt = np.zeros((B, S, P, K), np.int32)
    tmask = np.zeros((B, S, P, K), np.float32)
    omask = np.zeros((B, n_opt), bool)
    labels = np.zeros((B,), np.int32)
    weights = np.zeros((B,), np.float32)
    for b, e in enumerate(exs):
        for s in range(S):
            # an example with fewer options than S repeats its first sequence (masked out via option_mask)
            j = s if s < len(e.seqs) else 0
            seq, off, tg = e.seqs[j], e.offsets[j], e.targets[j]
            L, n = len(seq), len(off)
            start = T - L if padding_side == "left" else 0
            ids[b, s, start : start + L] = seq
            mask[b, s, start : start + L] = 1
            pos[b, s, :n] = start + L + off
            tgt[b, s, :n, : tg.shape[1]] = tg
            if j == s:
                tmask[b, s, :n, : tg.shape[1]] = 1.0
        omask[b, : e.num_options] = True
        labels[b] = e.label
        weights[b] = 1.0 if b < n_real else 0.0
    return Batch(ids, mask, pos, tgt, tmask, omask, labels, weights, enc.length_norm, padding_side)


def iter_batches(
    enc: EncodedTask, batch_size: int, *, seq_len: int | None = None, padding_side: str = "left"
) -> Iterator[Batch]:
    """All examples in order, ``batch_size`` at a time; the last batch is padded (weights 0).

    >>> enc = encode_task([{"sentence": "a", "label": 0}] * 3, "sst2", _ToyTokenizer())
    >>> [b.weights.tolist() for b in iter_batches(enc, 2)]
    [[1.0, 1.0], [1.0, 0.0]]
    """
    for start in range(0, len(enc), batch_size):
        stop = min(start + batch_size, len(enc))
        yield make_batch(
            enc, range(start, stop), batch_size=batch_size, seq_len=seq_len, padding_side=padding_side
        )


def train_batch(
    enc: EncodedTask, seed: int, step: int, batch_size: int, *, seq_len: int | None = None
) -> Batch:
    """The training batch of ``step``: :func:`zojax.tasks.batch_indices` (epoch permutations keyed by
    ``seed``), so a resumed run only needs the step number.

    >>> enc = encode_task([{"sentence": w, "label": 0} for w in "abcd"], "sst2", _ToyTokenizer())
    >>> bool((train_batch(enc, 0, 5, 2).input_ids == train_batch(enc, 0, 5, 2).input_ids).all())
    True
    """
    from zojax.tasks.data import batch_indices

    return make_batch(enc, batch_indices(seed, step, batch_size, len(enc)), seq_len=seq_len)


def train_batches(
    enc: EncodedTask,
    seed: int,
    start_step: int,
    num_steps: int,
    batch_size: int,
    *,
    seq_len: int | None = None,
) -> Batch:
    """Batches of steps ``start_step .. start_step + num_steps - 1`` stacked on a leading axis (for a
    ``lax.scan`` over steps), padded to a common T.

    >>> enc = encode_task([{"sentence": w, "label": 0} for w in "abcd"], "sst2", _ToyTokenizer())
    >>> train_batches(enc, 0, 0, 3, 2).input_ids.shape
    (3, 2, 1, 16)
    """
    return stack_batches(
        [
            train_batch(enc, seed, s, batch_size, seq_len=seq_len)
            for s in range(start_step, start_step + num_steps)
        ]
    )


def pad_batch(batch: Batch, seq_len: int, num_positions: int | None = None) -> Batch:
    """Widen a batch to T=``seq_len`` (and P=``num_positions``) with padding that changes nothing."""
    T, P = batch.input_ids.shape[-1], batch.positions.shape[-1]
    P2 = P if num_positions is None else num_positions
    if seq_len < T or P2 < P:
        raise ValueError(f"pad_batch: cannot shrink (T {T}->{seq_len}, P {P}->{P2})")
    dt, dp = seq_len - T, P2 - P
    if dt == 0 and dp == 0:
        return batch

    def widen(x, d, at_left):
        # pad id 0: attention_mask hides it, and every row keeps its real tokens
        w = [(0, 0)] * (x.ndim - 1) + [(d, 0) if at_left else (0, d)]
        return np.pad(np.asarray(x), w)

    left = batch.padding_side == "left"
    pos = np.asarray(batch.positions) + (dt if left else 0)
    tgt = np.asarray(batch.targets)
    tm = np.asarray(batch.target_mask)
    if dp:
        pos = np.pad(pos, [(0, 0)] * (pos.ndim - 1) + [(0, dp)])
        tgt = np.pad(tgt, [(0, 0)] * (tgt.ndim - 2) + [(0, dp), (0, 0)])
        tm = np.pad(tm, [(0, 0)] * (tm.ndim - 2) + [(0, dp), (0, 0)])
    return dataclasses.replace(
        batch,
        input_ids=widen(batch.input_ids, dt, left),
        attention_mask=widen(batch.attention_mask, dt, left),
        positions=pos,
        targets=tgt,
        target_mask=tm,
    )


def stack_batches(batches: Sequence[Batch]) -> Batch:
    """Stack batches on a new leading axis, first padding them to a common T and P.

    >>> enc = encode_task([{"sentence": "a " * 20, "label": 0}, {"sentence": "b", "label": 1}],
    ...                   "sst2", _ToyTokenizer())
    >>> stack_batches([make_batch(enc, [0]), make_batch(enc, [1])]).input_ids.shape
    (2, 1, 1, 32)
    """
    if not batches:
        raise ValueError("stack_batches: no batches")
    T = max(b.input_ids.shape[-1] for b in batches)
    P = max(b.positions.shape[-1] for b in batches)
    batches = [pad_batch(b, T, P) for b in batches]
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *batches)


def split_batch(batch: Batch, num: int, axis: int = 0) -> Batch:
    """Split the batch axis (``axis`` of every leaf) into ``(num, B // num)`` micro-batches.

    >>> enc = encode_task([{"sentence": "a", "label": 0}] * 4, "sst2", _ToyTokenizer())
    >>> split_batch(make_batch(enc, range(4)), 2).input_ids.shape
    (2, 2, 1, 16)
    """

    def split(x):
        B = x.shape[axis]
        if B % num:
            raise ValueError(f"split_batch: batch size {B} is not divisible by {num}")
        return x.reshape(x.shape[:axis] + (num, B // num) + x.shape[axis + 1 :])

    return jax.tree.map(split, batch)


class _ToyTokenizer:
    """Whitespace word-level tokenizer for the doctests: "It" 2, "was" 3, "terrible" 4, "great" 5, then
    new words get the next ids in order of appearance."""

    bos_token_id = None
    pad_token_id = 0
    eos_token_id = 1

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {"It": 2, "was": 3, "terrible": 4, "great": 5}

    def __call__(self, texts, add_special_tokens=True):
        one = isinstance(texts, str)
        out = [
            [self.vocab.setdefault(w, 2 + len(self.vocab)) for w in t.split()]
            for t in ([texts] if one else texts)
        ]
        return {"input_ids": out[0] if one else out}
