"""zojax.scope: which leaves train."""

import jax.numpy as jnp
import pytest

import zojax
from zojax.directions import LowRank


def test_scopes_select_expected_leaves():
    params = {
        "layers": {
            "q_proj": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "input_norm": {"scale": jnp.ones(2)},
        },
        "embed_tokens": {"embedding": jnp.ones((5, 2))},
        "steps": jnp.zeros((), jnp.int32),
    }
    lora = zojax.trainable_mask(params, "lora")
    assert lora["layers"]["q_proj"] == {"kernel": True, "bias": False}
    assert not lora["embed_tokens"]["embedding"] and not lora["steps"]
    weights = zojax.trainable_mask(params, "weights")
    assert weights["layers"]["q_proj"]["kernel"] and not weights["embed_tokens"]["embedding"]
    nb = zojax.trainable_mask(params, "norms_biases")
    assert nb["layers"]["input_norm"]["scale"] and nb["layers"]["q_proj"]["bias"]
    assert not zojax.trainable_mask(params, "all")["steps"]  # integer leaves never train
    custom = zojax.trainable_mask(params, lambda path, x: x.ndim == 1)
    assert custom["layers"]["q_proj"]["bias"] and not custom["layers"]["q_proj"]["kernel"]
    excl = zojax.trainable_mask(params, "all", LowRank(vectors="exclude"))
    assert not excl["layers"]["q_proj"]["bias"]


def test_scope_selecting_nothing_names_the_scope():
    with pytest.raises(ValueError, match="no_such_leaf"):
        zojax.partition({"w": jnp.ones(2)}, "no_such_leaf")
