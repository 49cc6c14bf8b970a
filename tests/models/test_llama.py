"""Llama family (Llama, Qwen2, Qwen3, Mistral): parity with transformers' PyTorch models, the
adapter path (Perturbed leaves, vmapped population with shared base), partial logits, KV cache."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zojax import nn as znn
from zojax.models import generate, llama, loading

from .hf_reference import CONFIGS, hf_logits, padded_batch

pytestmark = pytest.mark.filterwarnings("ignore:no tokenizer files")


@pytest.fixture(scope="module")
def loaded(hf_checkpoint):
    @functools.cache
    def get(name):
        tm, path = hf_checkpoint(name)
        model, config, _ = loading.from_pretrained(path)
        return tm, model, config

    return get


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(loaded, name):
    tm, model, config = loaded(name)
    assert isinstance(model, llama.Model)
    ids, mask = padded_batch(config.vocab_size)
    ref = hf_logits(tm, ids, mask)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda m, i, k: m(i, k))(model, ids, mask))
    assert out.shape == ref.shape
    real = mask.astype(bool)  # padded positions' outputs are unspecified
    np.testing.assert_allclose(out[real], ref[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_round_trip(loaded, name):
    tm, _, config = loaded(name)
    assert llama.Config.from_hf(config.to_hf()) == config
    assert hash(config) == hash(llama.Config.from_hf(tm.config))


def test_rope_frequencies_match_transformers(loaded):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    tm, _, config = loaded("llama3_tied_bias")
    ref, scale = ROPE_INIT_FUNCTIONS["llama3"](tm.config)
    inv, s = llama.rope_frequencies(config)
    np.testing.assert_allclose(inv, ref.numpy(), rtol=1e-6)
    assert s == scale
    for kind, extra in [
        ("linear", {"factor": 2.0}),
        ("yarn", {"factor": 4.0, "original_max_position_embeddings": 16}),
    ]:
        hf = tm.config.__class__(
            **{**tm.config.to_dict(), "rope_parameters": {"rope_type": kind, "rope_theta": 5000.0, **extra}}
        )
        ref, scale = ROPE_INIT_FUNCTIONS[kind](hf)
        inv, s = llama.rope_frequencies(llama.Config.from_hf(hf))
        np.testing.assert_allclose(inv, ref.numpy(), rtol=1e-5)
        np.testing.assert_allclose(s, scale, rtol=1e-6)


def _loss_fn(graphdef):
    """The engine's pure loss: merge the (possibly Perturbed) state, next-token cross-entropy."""

    def loss(state, ids, mask):
        logits = nnx.merge(graphdef, state)(ids, mask)
        logp = jax.nn.log_softmax(logits[:, :-1], -1)
        nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
        w = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
        return jnp.sum(nll * w) / jnp.sum(w)

    return loss


def _perturb(state, seed, eps, members=None, rank=2):
    """Every >=2-D leaf as Perturbed(base, eps*v, u) (stacked kernels keep the layer axis on v/u);
    1-D leaves get a dense additive perturbation. ``members``: leading population axis on v/u and
    on the dense leaves only (base shared). numpy RNG: eager jax.random would compile per shape."""
    rng = np.random.RandomState(seed)
    lead = () if members is None else (members,)

    def one(a):
        if a.ndim >= 2:
            stack, (d_in, d_out) = a.shape[:-2], a.shape[-2:]
            v = rng.standard_normal(lead + stack + (d_in, rank)).astype(np.float32)
            u = rng.standard_normal(lead + stack + (d_out, rank)).astype(np.float32)
            return znn.Perturbed(a, jnp.asarray(eps * v), jnp.asarray(u))
        return a + jnp.asarray(eps * rng.standard_normal(lead + a.shape).astype(np.float32))

    return jax.tree.map(one, state)


@pytest.mark.parametrize("name", ["llama3_tied_bias"])  # biases, tied Perturbed embedding
def test_adapter_path_equals_materialized(loaded, name, monkeypatch):
    # the factored form throughout (at these tiny widths dense() would form the weights)
    monkeypatch.setattr(znn, "factored_is_cheaper", lambda x, w: True)
    _, model, config = loaded(name)
    graphdef, state = nnx.split(model)
    loss = jax.jit(_loss_fn(graphdef))
    ids, mask = padded_batch(config.vocab_size)
    def dense(s):
        return jax.tree.map(znn.materialize, s, is_leaf=znn.is_perturbed)

    with jax.default_matmul_precision("highest"):
        base_loss = loss(state, ids, mask)
        for eps in (1e-2, -1e-2):
            s = _perturb(state, 0, eps)
            lp, ld = loss(s, ids, mask), loss(dense(s), ids, mask)
            np.testing.assert_allclose(lp, ld, rtol=1e-5)
            assert abs(float(lp) - float(base_loss)) > 1e-5  # the perturbation did something

        # Population: v/u (and dense leaves) batched, every base unbatched.
        K = 3
        pop = _perturb(state, 1, 1e-2, members=K)
        axes = jax.tree.map(
            lambda x: znn.Perturbed(None, 0, 0) if znn.is_perturbed(x) else 0, pop, is_leaf=znn.is_perturbed
        )
        vloss = jax.vmap(_loss_fn(graphdef), in_axes=(axes, None, None))
        got = jax.jit(vloss)(pop, ids, mask)
        for k in range(K):
            member = jax.tree.map(
                lambda x, k=k: znn.Perturbed(x.base, x.v[k], x.u[k]) if znn.is_perturbed(x) else x[k],
                pop,
                is_leaf=znn.is_perturbed,
            )
            np.testing.assert_allclose(got[k], loss(dense(member), ids, mask), rtol=1e-5)

    # The shared base is never broadcast per member: no (K, *base.shape) array in the program.
    big = state["layers"]["mlp"]["gate_proj"]["kernel"][...]
    text = str(jax.make_jaxpr(vloss)(pop, ids, mask))
    L, d_in, d_out = big.shape
    assert f"f32[{K},{L},{d_in},{d_out}]" not in text
    assert f"f32[{K},{d_in},{d_out}]" not in text


def test_logits_positions_match_slicing(loaded):
    _, model, config = loaded("qwen2")
    ids, mask = padded_batch(config.vocab_size)
    full = jax.jit(lambda m, i, k: m(i, k))(model, ids, mask)
    pos = np.array([[6, 2], [4, 0], [6, 5]], np.int32)
    part = jax.jit(lambda m, i, k, p: m(i, k, logits_positions=p))(model, ids, mask, pos)
    assert part.shape == (3, 2, config.vocab_size)
    np.testing.assert_allclose(part, np.take_along_axis(np.asarray(full), pos[..., None], 1), atol=1e-5)


@pytest.mark.parametrize("name", ["qwen2", "llama3_tied_bias"])  # untied lm_head, tied embedding
def test_logits_tokens_are_the_full_logits_of_those_tokens(loaded, name):
    _, model, config = loaded(name)
    ids, mask = padded_batch(config.vocab_size)
    pos = np.array([[6], [4], [6]], np.int32)
    tokens = np.array([[[5, 9, 5]], [[0, 1, 2]], [[66, 3, 7]]], np.int32)
    full, part = jax.jit(
        lambda m: (m(ids, mask, logits_positions=pos), m(ids, mask, logits_positions=pos, logits_tokens=tokens))
    )(model)
    assert part.shape == (3, 1, 3)
    np.testing.assert_allclose(part, np.take_along_axis(np.asarray(full), tokens, axis=-1), atol=1e-5)


@jax.jit
def _last_logits(model, ids, mask, last):
    return model(ids, mask, logits_positions=last)[:, 0]


def _greedy_no_cache(model, prompt, n, width=16):
    # Full forward over a fixed-width right-padded buffer (one compile), argmax at the last token.
    seq = list(prompt)
    for _ in range(n):
        ids = np.zeros((1, width), np.int32)
        ids[0, : len(seq)] = seq
        mask = (np.arange(width) < len(seq)).astype(np.int32)[None]
        logits = _last_logits(model, ids, mask, np.array([[len(seq) - 1]], np.int32))
        seq.append(int(jnp.argmax(logits[0])))
    return seq[len(prompt) :]


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_kv_cache_generation_matches_no_cache(loaded, name):
    _, model, _ = loaded(name)
    prompts = [[5, 9, 13, 2, 7], [11, 3], [1, 60, 33, 8, 9, 10, 4, 2, 6]]
    got = generate(model, None, prompts, max_new_tokens=6, eos_token_id=(), bucket=4)
    assert got.shape == (3, 6)
    for row, p in zip(got, prompts):
        assert list(row) == _greedy_no_cache(model, p, 6)


def test_cache_prefill_logits_match_full_forward(loaded):
    # Chunked prefill through the cache (left-padded batch) equals one full forward.
    _, model, config = loaded("mistral_window")
    ids, mask = padded_batch(config.vocab_size)
    mask[1] = 1  # cache callers append: no right padding
    full = np.asarray(jax.jit(lambda m, i, k: m(i, k))(model, ids, mask))
    step = jax.jit(lambda m, i, k, c: m(i, k, cache=c))
    cache = model.init_cache(3, 10)
    a, cache = step(model, ids[:, :4], mask[:, :4], cache)
    b, cache = step(model, ids[:, 4:], mask[:, 4:], cache)
    got = np.concatenate([a, b], 1)
    np.testing.assert_allclose(got[mask.astype(bool)], full[mask.astype(bool)], atol=1e-5)
    assert int(cache["index"]) == 7


def test_bf16_params_and_compute(hf_checkpoint):
    _, path = hf_checkpoint("llama")
    m, _, _ = loading.from_pretrained(path, param_dtype=jnp.bfloat16)  # dtype defaults to param_dtype
    assert m.layers.self_attn.q_proj.kernel[...].dtype == jnp.bfloat16 and m.dtype == jnp.bfloat16
    ids, mask = padded_batch(m.config.vocab_size)
    out = jax.jit(lambda m, i, k: m(i, k))(m, ids, mask)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
