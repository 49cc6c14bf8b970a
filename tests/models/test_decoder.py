"""The shared decoder core and the family interface: what every family must satisfy."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from zojax.models import Family, llama, opt, stacked_paths
from zojax.models import layers as zlayers
from zojax.models.decoder import CausalLM
from zojax.paths import path_str

# Three layers: no other dimension of these configs is 3, so a leading 3 means "stacked".
CONFIGS = {
    "llama": (llama, llama.Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, qk_norm=True, qkv_bias=True)),
    "opt": (opt, opt.Config(vocab_size=32, hidden_size=16, ffn_dim=24, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=20, word_embed_proj_dim=8)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_family_modules_satisfy_the_interface(name):
    family, config = CONFIGS[name]
    assert isinstance(family, Family)
    assert issubclass(family.Model, CausalLM)
    assert family.apply == family.Model.apply  # the pure forward is the model's own
    assert isinstance(config, family.Config) and config.num_key_value_heads <= config.num_attention_heads


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stacked_paths_name_exactly_the_stacked_leaves(name):
    family, config = CONFIGS[name]
    model = family.Model(config, rngs=nnx.Rngs(0))
    regex = stacked_paths(model)
    assert regex == stacked_paths(family.Model) == stacked_paths(family) == family.Model.stacked_paths
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    stacked = {path_str(k) for k, x in leaves if x.shape[0] == config.num_hidden_layers}
    assert stacked and {path_str(k) for k, _ in leaves if re.search(regex, path_str(k))} == stacked
    # The checkpoint map agrees: a tensor is one layer's slice exactly where the path is stacked.
    for spec in family.hf_param_map(config).values():
        assert (spec.layer is not None) == bool(re.search(regex, "/".join(spec.path))), spec.path


def test_stacked_paths_is_none_for_a_model_that_declares_nothing():
    assert stacked_paths(nnx.Linear(2, 3, rngs=nnx.Rngs(0))) is None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_eager_init_draws_on_the_host(name, monkeypatch):
    # jax's threefry would compile once per param shape (seconds for a tiny model on CPU).
    family, config = CONFIGS[name]

    def no_jax_rng(*args, **kwargs):
        raise AssertionError("eager init used jax.random")

    monkeypatch.setattr(jax.random, "normal", no_jax_rng)
    a, b, c = (nnx.state(family.Model(config, rngs=nnx.Rngs(s)), nnx.Param) for s in (0, 0, 1))
    kernel = lambda st: np.asarray(st["layers"]["self_attn"]["q_proj"]["kernel"][...])  # noqa: E731
    np.testing.assert_array_equal(kernel(a), kernel(b))  # reproducible from the seed
    assert not np.array_equal(kernel(a), kernel(c))
    assert 0.01 < kernel(a).std() < 0.03  # N(0, 0.02^2)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # multi-head, grouped, multi-query
def test_attention_matches_a_reference(kv_heads):
    rng = np.random.default_rng(0)
    B, S, T, H, D = 2, 3, 5, 4, 8
    q = rng.standard_normal((B, S, H, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, T, kv_heads, D)).astype(np.float32) for _ in range(2))
    valid = rng.random((B, S, T)) < 0.7
    valid[..., 0] = True
    got = zlayers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(valid), 0.5)

    kr, vr = (np.repeat(x, H // kv_heads, axis=2) for x in (k, v))  # each query head's k/v head
    scores = np.where(valid[:, None], 0.5 * np.einsum("bshd,bthd->bhst", q, kr), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ref = np.einsum("bhst,bthd->bshd", probs, vr).reshape(B, S, H * D)
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5)


def test_attention_mask_must_match_the_ids():
    family, config = CONFIGS["llama"]
    model = family.Model(config, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention_mask must have the shape of input_ids"):
        model(jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 6), jnp.int32))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_unrolled_layers_give_the_scans_logits_and_cache(name):
    family, config = CONFIGS[name]
    model = family.Model(config, rngs=nnx.Rngs(0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 5)), jnp.int32)
    mask = jnp.ones((2, 5), jnp.int32).at[0, :2].set(0)  # left padding
    np.testing.assert_allclose(model(ids, mask, unroll_layers=True), model(ids, mask), rtol=1e-6, atol=1e-6)
    scanned, scan_cache = model(ids, mask, cache=model.init_cache(2, 8))
    unrolled, unrolled_cache = model(ids, mask, cache=model.init_cache(2, 8), unroll_layers=True)
    np.testing.assert_allclose(unrolled, scanned, rtol=1e-6, atol=1e-6)
    for key in ("k", "v"):
        np.testing.assert_allclose(unrolled_cache[key], scan_cache[key], rtol=1e-6, atol=1e-6)
    # no layer loop in the unrolled program: each layer's weights are static slices
    hlo = jax.jit(lambda i, m: model(i, m, unroll_layers=True)).lower(ids, mask).as_text()
    assert "while" not in hlo and "while" in jax.jit(lambda i, m: model(i, m)).lower(ids, mask).as_text()
