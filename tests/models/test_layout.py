"""Families declare their projections; the lora scope and the sharding rules come from that one declaration."""

from __future__ import annotations

import re

import jax
import pytest
from flax import nnx

from zojax.config import load_config
from zojax.layout import HF_PROJECTIONS, Projections
from zojax.models import llama, opt, projections, sharding_rules
from zojax.paths import leaf_paths
from zojax.run import make_spec
from zojax.scope import SCOPE_PRESETS, partition

FAMILIES = {
    "llama": (llama, llama.Config(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, qkv_bias=True)),
    "opt": (opt, opt.Config(vocab_size=32, hidden_size=16, ffn_dim=24, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=20)),
}


def _abstract(family, config):
    return nnx.eval_shape(lambda: family.Model(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_declared_projections_are_exactly_the_models_linear_layers(name):
    family, config = FAMILIES[name]
    model = _abstract(family, config)
    declared = projections(model)
    assert declared == projections(family) and not set(declared.column) & set(declared.row)
    # every kernel inside the decoder layers belongs to a declared projection, and each declared name exists
    kernels = {p.split("/")[-2] for p in leaf_paths(nnx.state(model, nnx.Param))
               if p.startswith("layers/") and p.endswith("/kernel")}
    assert kernels == set(declared.column + declared.row)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_lora_scope_is_the_familys_and_selects_the_same_leaves_as_the_hf_preset(name):
    family, config = FAMILIES[name]
    model = _abstract(family, config)
    params = nnx.state(model, nnx.Param)
    spec = make_spec(load_config(None, ["zo.scope=lora"]), model)
    assert spec.scope == projections(family).lora_scope
    trainable, _ = partition(params, spec.scope, spec.noise)
    chosen = set(leaf_paths(trainable))
    assert chosen and all(re.search(r"/kernel$", p) for p in chosen)
    # the engine's default (Hugging Face's names) agrees on zojax's own families
    assert chosen == set(leaf_paths(partition(params, SCOPE_PRESETS["lora"], spec.noise)[0]))


def test_sharding_rules_follow_the_declaration():
    from zojax.parallel import DEFAULT_RULES, param_spec

    mesh = jax.sharding.AbstractMesh((1, 2), ("pop", "model"))
    rules = sharding_rules(opt)
    assert param_spec("layers/fc1/kernel", (2, 16, 24), mesh, rules)[-1] == "model"  # column: d_out
    assert param_spec("layers/fc2/kernel", (2, 24, 16), mesh, rules)[-2] == "model"  # row: d_in
    assert param_spec("layers/self_attn/out_proj/bias", (2, 16), mesh, rules) == jax.sharding.PartitionSpec(None, None)
    assert sharding_rules(nnx.Linear) == DEFAULT_RULES == HF_PROJECTIONS.sharding_rules  # declares nothing


def test_a_model_with_its_own_names_gets_its_own_lora_scope():
    class Block(nnx.Module):
        projections = Projections(column=("wq",), row=("wo",))

        def __init__(self):
            self.wq = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
            self.wo = nnx.Linear(4, 4, rngs=nnx.Rngs(1))
            self.norm = nnx.LayerNorm(4, rngs=nnx.Rngs(2))

    block = Block()
    spec = make_spec(load_config(None, ["zo.scope=lora"]), block)
    trainable, _ = partition(nnx.state(block, nnx.Param), spec.scope, spec.noise)
    assert set(leaf_paths(trainable)) == {"wq/kernel", "wo/kernel"}
    # without a model the preset is Hugging Face's names, which this block does not use
    with pytest.raises(ValueError, match="selects no trainable leaves"):
        partition(nnx.state(block, nnx.Param), make_spec(load_config(None, ["zo.scope=lora"])).scope)
