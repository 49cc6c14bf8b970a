"""zojax.nn: Perturbed and Noisy weights, and the matmuls that consume them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zojax import nn
from zojax.directions import Gaussian

KEY = jax.random.PRNGKey(0)


def test_dense_forms_the_weight_only_when_activations_outweigh_it():
    def perturbed(d_in, d_out, stack=()):
        return nn.Perturbed(jnp.zeros(stack + (d_in, d_out)), jnp.zeros(stack + (d_in, 2)),
                            jnp.zeros(stack + (d_out, 2)))

    tokens = jnp.zeros((16, 48, 576))  # batch 16 of 48 tokens
    assert not nn.factored_is_cheaper(tokens, perturbed(576, 1536))  # SmolLM2-135M: form it
    assert nn.factored_is_cheaper(jnp.zeros((16, 48, 5120)), perturbed(5120, 5120))  # OPT-13B: factored
    # rows are counted per matrix when the weight carries stacked (batch) axes
    assert nn.factored_is_cheaper(jnp.zeros((30, 4, 576)), perturbed(576, 576, (30,)))


def test_token_logits_of_perturbed_and_noisy_heads_match_the_formed_head():
    k1, k2, k3 = jax.random.split(KEY, 3)
    table = jax.random.normal(k1, (11, 6))
    h = jax.random.normal(k2, (2, 3, 6))
    tokens = jnp.array([[[1, 10], [0, 0], [5, 2]], [[3, 4], [9, 8], [7, 6]]])
    heads = {
        "perturbed": nn.Perturbed(table, jax.random.normal(k3, (11, 2)), jnp.ones((6, 2)), jnp.float32(-0.5)),
        "noisy": nn.Noisy.create(table, k3, 0.1, Gaussian()),
    }
    for name, head in heads.items():
        want = jnp.take_along_axis(h @ nn.materialize(head).T, tokens, axis=-1)
        np.testing.assert_allclose(nn.token_logits(h, tokens, table=head), want, rtol=1e-5, atol=1e-5, err_msg=name)
    kernel = nn.Perturbed(table.T, jnp.ones((6, 2)), jax.random.normal(k3, (11, 2)), jnp.float32(0.3))
    want = jnp.take_along_axis(h @ nn.materialize(kernel), tokens, axis=-1)
    np.testing.assert_allclose(nn.token_logits(h, tokens, kernel=kernel), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        nn.token_logits(h, tokens)
