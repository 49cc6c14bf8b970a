"""zojax.directions.lowrank: the lazy V and fresh U, one factor per layer of a stack, which leaves are matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zojax
from zojax import nn
from zojax.directions import LowRank, LowRankDirection

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


def test_lowrank_v_is_lazy_and_u_fresh():
    noise = LowRank(rank=2, refresh_every=4)
    get = lambda t: noise.draw(KEY, t, 0, "w", (6, 5), jnp.float32)  # noqa: E731
    d0, d3, d4 = get(0), get(3), get(4)
    np.testing.assert_array_equal(d0.v, d3.v)
    assert not np.allclose(d0.u, d3.u)
    assert not np.allclose(d3.v, d4.v)
    assert d0.v.shape == (6, 2) and d0.u.shape == (5, 2)


def test_stacked_leaves_get_independent_factors_per_layer():
    d = LowRank(rank=1).draw(KEY, 0, 0, "w", (3, 4, 5), jnp.float32)
    assert d.v.shape == (3, 4, 1)
    assert not np.allclose(d.v[0], d.v[1])


@pytest.mark.parametrize("noise", [LowRank(rank=2, refresh_every=3), zojax.Factorized(rank=4)], ids=["lozo", "factorized"])
def test_lazy_factors_drawn_one_layer_at_a_time_are_the_drawn_ones(noise):
    """The adapter path's undrawn factors of a stack, sliced to one layer as a layer scan does, are bit for bit the
    arrays the gradient draws; a lone matrix's factors are drawn at once (nothing would slice them)."""
    shape = (3, 6, 5)
    drawn = noise.draw(KEY, 4, 1, "w", shape, jnp.float32)
    lazy = noise.draw(KEY, 4, 1, "w", shape, jnp.float32, lazy=True)
    assert isinstance(lazy.v, nn.Drawn) and isinstance(lazy.u, nn.Drawn)

    def layer(f, i):
        return nn.factor(jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, i, 0, keepdims=False), f))

    scan = jax.jit(lambda lz: jax.lax.map(lambda i: (layer(lz.v, i), layer(lz.u, i)), jnp.arange(shape[0])))
    v, u = scan(lazy)
    np.testing.assert_array_equal(v, drawn.v)
    np.testing.assert_array_equal(u * noise.scale, drawn.u)  # a lazy u is unscaled: the scale rides with eps
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    np.testing.assert_allclose(nn.materialize(noise.perturb(x, lazy, 0.5, adapter=True)),
                               nn.materialize(noise.perturb(x, drawn, 0.5, adapter=True)), rtol=1e-6, atol=1e-6)
    lone = noise.draw(KEY, 4, 1, "w", shape[1:], jnp.float32, lazy=True)
    assert isinstance(lone.v, jax.Array)


def test_bad_rank_names_the_argument():
    with pytest.raises(ValueError, match="rank"):
        LowRank(rank=0)
    with pytest.raises(ValueError, match="refresh_every"):
        LowRank(refresh_every=0)


class Block(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(4, 3, rngs=rngs)


class ListedLayers(nnx.Module):
    """The usual NNX model: a list of layers, nothing stacked."""

    def __init__(self, rngs):
        self.layers = nnx.List([Block(rngs), Block(rngs)])


def test_nnx_list_of_layers_is_not_guessed_to_be_stacked():
    params = nnx.state(ListedLayers(nnx.Rngs(0)), nnx.Param)
    noise = LowRank(rank=1)
    dirs = zojax.draw_directions(params, noise, KEY3, 0, 0)
    kernel = dirs["layers"][0]["lin"]["kernel"]
    kernel = kernel.value if hasattr(kernel, "value") else kernel
    assert isinstance(kernel, LowRankDirection) and kernel.v.shape == (4, 1)
    # ...and zo_sgd decays that kernel but not the bias
    opt = zojax.zo_sgd(0.1, weight_decay=0.5)
    flat = {"layers/0/lin/kernel": jnp.ones((4, 3)), "layers/0/lin/bias": jnp.ones(3)}
    grad = zojax.ZOGrad(KEY3, jnp.int32(0), jnp.zeros(1), noise)
    updates, _ = opt.update(grad, opt.init(flat), flat)
    np.testing.assert_allclose(updates["layers/0/lin/kernel"], -0.05)
    np.testing.assert_allclose(updates["layers/0/lin/bias"], 0.0)


def test_declared_stacks_decide_matrix_or_vector():
    stacked = LowRank(rank=1, stacked=r"^blocks/")
    d = stacked.draw(KEY3, 0, 0, "blocks/norm/scale", (5, 8), jnp.float32)
    assert not isinstance(d, LowRankDirection) and d.shape == (5, 8)  # 5 layers of vectors
    d = stacked.draw(KEY3, 0, 0, "blocks/lin/kernel", (5, 8, 3), jnp.float32)
    assert d.v.shape == (5, 8, 1)  # 5 layers of matrices, one factor each
    d = LowRank(rank=1).draw(KEY3, 0, 0, "blocks/norm/scale", (5, 8), jnp.float32)
    assert isinstance(d, LowRankDirection)  # undeclared: a (5, 8) matrix
