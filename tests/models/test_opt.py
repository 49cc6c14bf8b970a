"""OPT: parity with transformers' PyTorch model, the adapter path, partial logits, KV cache."""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file

from zojax import nn as znn
from zojax.models import loading, opt

from .hf_reference import randomize

TINY = {
    "vocab_size": 61,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "ffn_dim": 24,
    "num_attention_heads": 4,
    "max_position_embeddings": 24,
}
CONFIGS = {
    "pre_ln": TINY,
    "post_ln_proj": {**TINY, "do_layer_norm_before": False, "word_embed_proj_dim": 8},  # opt-350m style
    "pre_ln_proj": {**TINY, "word_embed_proj_dim": 8},
    "no_bias_no_affine": {**TINY, "enable_bias": False, "layer_norm_elementwise_affine": False},
}


def _hf_model(name: str):
    """A random torch OPTForCausalLM for CONFIGS[name]."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    hf_config = OPTConfig(**CONFIGS[name], attn_implementation="eager")
    model = OPTForCausalLM(hf_config).eval()
    randomize(model, seed=1, is_norm=lambda n: "layer_norm" in n and n.endswith("weight"))
    return model


def _load(path: str) -> opt.Model:
    """Load an HF checkpoint dir through the family-agnostic loader."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "no tokenizer files")  # weights-only checkpoints
        model, config, _ = loading.from_pretrained(path)
    assert isinstance(model, opt.Model) and config == model.config, type(model)
    return model


def _batch(vocab: int, left: bool, lengths=(7, 5, 2), seq: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(len(lengths), seq))
    mask = np.zeros_like(ids)
    for b, n in enumerate(lengths):
        if left:
            mask[b, seq - n :] = 1
        else:
            mask[b, :n] = 1
    ids = np.where(mask == 1, ids, 1)  # pad id
    return ids, mask


def _loss(logits, ids, mask):
    """Mean next-token cross-entropy over real target tokens."""
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    w = (mask[:, 1:] * mask[:, :-1]).astype(jnp.float32)
    return (nll * w).sum() / w.sum()


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(name, hf_checkpoint):
    torch_model, path = hf_checkpoint(name, _hf_model)
    model = _load(path)
    assert model.config == opt.Config.from_hf(torch_model.config)
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    for left in (True, False):
        ids, mask = _batch(model.config.vocab_size, left)
        with torch.no_grad():
            ref = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        with jax.default_matmul_precision("highest"):
            got = np.asarray(fwd(state, jnp.asarray(ids), jnp.asarray(mask)))
        real = mask.astype(bool)  # padded positions are undefined in both
        assert np.abs(ref).max() > 1.0  # the random init is not degenerate
        np.testing.assert_allclose(got[real], ref[real], atol=1e-4, rtol=0)


def test_param_map_config_and_export_roundtrip(hf_checkpoint, tmp_path):
    from transformers import OPTForCausalLM

    for name in CONFIGS:
        torch_model, path = hf_checkpoint(name, _hf_model)
        cfg = opt.Config.from_hf(torch_model.config)
        assert opt.Config.from_hf(cfg.to_hf()) == cfg
        saved = load_file(os.path.join(path, "model.safetensors"))
        spec = opt.hf_param_map(cfg)
        assert set(spec) == set(saved) - {"lm_head.weight"}
        model = _load(path)
        # hf_param_map's inverse transforms give back every tensor bit-exact.
        pure = nnx.to_pure_dict(nnx.split(model)[1])
        for hf_name, s in spec.items():
            leaf = functools.reduce(lambda d, k: d[k], s.path, pure)
            leaf = np.asarray(leaf if s.layer is None else leaf[s.layer])
            np.testing.assert_array_equal(s.to_hf(leaf), saved[hf_name])
        # Export through the loader module: transformers reads it back as the same model.
        out = loading.save_pretrained(model, directory=tmp_path / name)
        back = OPTForCausalLM.from_pretrained(str(out)).state_dict()
        for k, v in torch_model.state_dict().items():
            torch.testing.assert_close(back[k], v, rtol=0, atol=0)


def test_path_names():
    cfg = opt.Config(**CONFIGS["post_ln_proj"])
    state = nnx.split(opt.Model(cfg, rngs=nnx.Rngs(0)))[1]
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state)}
    assert "embed_tokens/embedding" in paths and "embed_positions/embedding" in paths
    assert "layers/self_attn/q_proj/kernel" in paths and "layers/fc2/bias" in paths
    assert "project_in/kernel" in paths and "final_layer_norm/scale" not in paths  # post-LN
    norms = {p for p in paths if "norm" in p}
    assert norms == {p for p in paths if p.endswith("scale")} | {p for p in norms if p.endswith("bias")}
    assert len(norms) == 4  # 2 per-layer LayerNorms x (scale, bias); post-LN has no final one


# --- adapter path ---------------------------------------------------------------------------


def _perturb(state, seed, eps, population=None):
    """Every >=2-D leaf becomes Perturbed(base, eps*v, u) with a rank-2 direction; 1-D leaves
    get dense noise. With ``population`` K, v/u and dense leaves get a leading K axis.
    (numpy noise: jax's threefry compiles once per shape, which dominates a tiny test.)"""
    rng = np.random.default_rng(seed)
    lead = () if population is None else (population,)

    def one(x):
        if x.ndim >= 2:
            v = eps * rng.standard_normal(lead + x.shape[:-1] + (2,), np.float32)
            u = rng.standard_normal(lead + x.shape[:-2] + (x.shape[-1], 2), np.float32)
            return znn.Perturbed(x, jnp.asarray(v), jnp.asarray(u))
        return x + eps * rng.standard_normal(lead + x.shape, np.float32)

    return jax.tree.map(one, state)


def _materialized(state):
    return jax.tree.map(znn.materialize, state, is_leaf=znn.is_perturbed)


def test_adapter_path_matches_materialized_weights(hf_checkpoint):
    _, path = hf_checkpoint("pre_ln_proj", _hf_model)
    graphdef, state = nnx.split(_load(path))
    ids, mask = (jnp.asarray(a) for a in _batch(CONFIGS["pre_ln_proj"]["vocab_size"], left=True))

    @jax.jit
    def loss(s):
        return _loss(nnx.merge(graphdef, s)(ids, mask), ids, mask)

    with jax.default_matmul_precision("highest"):
        plus = _perturb(state, 0, 0.05)
        minus = _perturb(state, 0, -0.05)
        lp, lm = loss(plus), loss(minus)
        np.testing.assert_allclose(lp, loss(_materialized(plus)), rtol=1e-5)
        np.testing.assert_allclose(lm, loss(_materialized(minus)), rtol=1e-5)
        assert abs(float(lp) - float(lm)) > 1e-3  # the perturbation reaches the loss

        # Population: v/u and dense leaves batched, every base shared (in_axes None).
        K = 3
        pop = _perturb(state, 1, 0.05, population=K)
        axes = jax.tree.map(
            lambda x: znn.Perturbed(None, 0, 0) if znn.is_perturbed(x) else 0,
            pop,
            is_leaf=znn.is_perturbed,
        )
        got = jax.jit(jax.vmap(loss, in_axes=(axes,)))(pop)

        def member(k):
            return jax.tree.map(
                lambda x: znn.Perturbed(x.base, x.v[k], x.u[k]) if znn.is_perturbed(x) else x[k],
                pop,
                is_leaf=znn.is_perturbed,
            )

        for k in range(K):
            np.testing.assert_allclose(got[k], loss(_materialized(member(k))), rtol=1e-5)
        assert np.ptp(np.asarray(got)) > 1e-4


# --- partial logits and KV cache ------------------------------------------------------------


def test_logits_positions_equal_sliced_logits():
    cfg = opt.Config(**CONFIGS["post_ln_proj"])
    model = opt.Model(cfg, rngs=nnx.Rngs(3))
    ids, mask = (jnp.asarray(a) for a in _batch(cfg.vocab_size, left=False))
    last = mask.sum(1) - 1
    pos = jnp.stack([last, jnp.zeros_like(last), last - 1], axis=1).clip(0)
    full, part = nnx.jit(lambda m: (m(ids, mask), m(ids, mask, logits_positions=pos)))(model)
    assert part.shape == (ids.shape[0], 3, cfg.vocab_size)
    np.testing.assert_allclose(part, jnp.take_along_axis(full, pos[..., None], axis=1), atol=1e-5)


def test_logits_tokens_are_the_full_logits_of_those_tokens():
    cfg = opt.Config(**CONFIGS["post_ln_proj"])  # project_out before the tied head
    model = opt.Model(cfg, rngs=nnx.Rngs(3))
    ids, mask = (jnp.asarray(a) for a in _batch(cfg.vocab_size, left=False))
    pos = (mask.sum(1) - 1)[:, None]
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (ids.shape[0], 1, 2)), jnp.int32)
    full, part = nnx.jit(lambda m: (m(ids, mask, logits_positions=pos),
                                    m(ids, mask, logits_positions=pos, logits_tokens=tokens)))(model)
    np.testing.assert_allclose(part, jnp.take_along_axis(full, tokens, axis=-1), atol=1e-5)


def test_cached_greedy_decoding_matches_uncached(hf_checkpoint):
    _, path = hf_checkpoint("pre_ln", _hf_model)
    model = _load(path)
    ids, mask = (jnp.asarray(a) for a in _batch(model.config.vocab_size, left=True))
    B, S = ids.shape
    steps = 5

    # Uncached reference: rerun the whole sequence each step, in a fixed (S + steps) buffer
    # whose not-yet-generated tail is masked out (causal, so it cannot affect the rest).
    graphdef, state = nnx.split(model)
    full = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    buf = jnp.concatenate([ids, jnp.ones((B, steps), ids.dtype)], 1)
    buf_mask = jnp.concatenate([mask, jnp.zeros((B, steps), mask.dtype)], 1)
    ref_tokens, ref_logits = [], []
    for t in range(steps):
        logits = full(state, buf, buf_mask)[:, S - 1 + t]
        tok = jnp.argmax(logits, -1)
        ref_tokens.append(tok)
        ref_logits.append(logits)
        buf = buf.at[:, S + t].set(tok)
        buf_mask = buf_mask.at[:, S + t].set(1)

    @functools.partial(jax.jit, static_argnames="explicit")
    def step(state, tok, cache, pos, explicit):
        m = nnx.merge(graphdef, state)
        return m(tok, None, positions=pos if explicit else None, cache=cache)

    for explicit in (False, True):
        cache = model.init_cache(B, S + steps)
        prefill = jax.jit(
            lambda s, i, m, c: nnx.merge(graphdef, s)(i, m, cache=c, logits_positions=jnp.full((B, 1), S - 1))
        )
        logits, cache = prefill(state, ids, mask, cache)
        next_pos = mask.sum(1, keepdims=True)  # HF position of the first generated token
        got_tokens, got_logits = [], []
        for t in range(steps):
            logits = logits[:, -1]
            tok = jnp.argmax(logits, -1)
            got_tokens.append(tok)
            got_logits.append(logits)
            logits, cache = step(state, tok[:, None], cache, next_pos + t, explicit)
        assert int(cache["index"]) == S + steps
        np.testing.assert_array_equal(np.stack(got_tokens), np.stack(ref_tokens))
        np.testing.assert_allclose(np.stack(got_logits), np.stack(ref_logits), atol=1e-4)


def test_bf16_compute_runs():
    cfg = opt.Config(**CONFIGS["pre_ln"])
    graphdef, state = nnx.split(opt.Model(cfg, rngs=nnx.Rngs(0)))
    m16 = opt.Model(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    graphdef16, _ = nnx.split(m16)
    assert m16.layers.fc1.kernel.get_value().dtype == jnp.bfloat16
    state16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), state)
    ids, mask = (jnp.asarray(a) for a in _batch(cfg.vocab_size, left=True))
    l32 = jax.jit(lambda s: nnx.merge(graphdef, s)(ids, mask))(state)
    l16 = jax.jit(lambda s: nnx.merge(graphdef16, s)(ids, mask))(state16)
    assert l16.dtype == jnp.float32 and bool(jnp.isfinite(l16).all())
    real = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(l16)[real], np.asarray(l32)[real], atol=0.02)


def test_opt_13b_shapes_abstractly():
    # Built and traced abstractly (nothing allocated): the stacked layout at full scale.
    cfg = opt.Config(hidden_size=5120, num_hidden_layers=40, ffn_dim=20480, num_attention_heads=40)
    model = nnx.eval_shape(
        lambda: opt.Model(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(model)
    flat = {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(state)}
    assert flat["layers/fc1/kernel"] == (40, 5120, 20480)
    assert flat["embed_positions/embedding"] == (2050, 5120)
    n_params = sum(int(np.prod(s)) for s in flat.values())
    assert 12.8e9 < n_params < 12.9e9
    assert len(opt.hf_param_map(cfg)) == 4 + 40 * 16
    ids = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    out = jax.eval_shape(
        lambda s, i: nnx.merge(graphdef, s)(i, logits_positions=jnp.zeros((2, 1), jnp.int32)), state, ids
    )
    assert out.shape == (2, 1, cfg.vocab_size) and out.dtype == jnp.float32
