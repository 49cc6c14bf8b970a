"""zojax.tasks.batching: encoding into static-shape batches (fast and general paths, truncation, BOS,
padding), scored by the toy LM against the slow, obvious reference."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

from zojax import tasks as T

from .toy_lm import COPA, SST2, J, _np_logprobs, reference_option_logprobs, toy_apply


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
