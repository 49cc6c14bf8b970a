"""zojax.scoring: the population scorer (generic and adapter paths, chunks, one- and two-sided)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import zojax
from zojax import nn
from zojax.directions import Factorized, Gaussian, LowRank
from zojax.toy import ToyMLP, toy_classification

from ..problems import NOISES, QUAD_BATCH, quad_params, quadratic, toy_loss

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


def bowl(params, batch):
    return jnp.sum((params["w"] - batch) ** 2)


@pytest.mark.parametrize("noise", NOISES, ids=lambda n: type(n).__name__)
@pytest.mark.parametrize("chunk", [None, 2])  # 2 does not divide K=5: remainder chunk
@pytest.mark.parametrize("sided", ["two", "one"])
def test_vmapped_scoring_equals_sequential_loop(noise, chunk, sided):
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=5, chunk_size=chunk, sided=sided)
    params = quad_params()
    losses = jax.jit(lambda p: zojax.score(quadratic, p, QUAD_BATCH, KEY, 7, spec))(params)
    expected = []
    for k in range(spec.members):
        d = zojax.draw_directions(params, noise, KEY, 7, k)
        dense = jax.tree.map(lambda x: x.dense() if isinstance(x, zojax.directions.LowRankDirection) else x, d,
                             is_leaf=lambda x: isinstance(x, zojax.directions.LowRankDirection))
        plus = quadratic(jax.tree.map(lambda p, z: p + spec.eps * z, params, dense), QUAD_BATCH)
        if sided == "two":
            reference = quadratic(jax.tree.map(lambda p, z: p - spec.eps * z, params, dense), QUAD_BATCH)
        else:
            reference = quadratic(params, QUAD_BATCH)
        expected.append([plus, reference])  # column 0 is always theta + eps z
    np.testing.assert_allclose(losses, np.array(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factored", [True, False], ids=["factored", "formed"])
@pytest.mark.parametrize("noise", [LowRank(rank=2), Factorized(rank=8)], ids=["lowrank", "factorized"])
def test_adapter_path_equals_generic_path_on_nnx_model(noise, factored, monkeypatch):
    """Both ways ``nn.dense`` may consume a Perturbed weight give the generic path's losses."""
    monkeypatch.setattr(nn, "factored_is_cheaper", lambda x, w: factored)
    graphdef, state = nnx.split(ToyMLP(4, 16, 3, rngs=nnx.Rngs(1)))
    batch = toy_classification(KEY, n=32)
    loss = toy_loss(graphdef)
    generic = zojax.ZOSpec(noise=noise, eps=1e-2, members=4)
    adapter = dataclasses.replace(generic, adapter=True)
    with jax.default_matmul_precision("highest"):
        a = jax.jit(lambda s: zojax.score(loss, s, batch, KEY, 3, generic))(state)
        b = jax.jit(lambda s: zojax.score(loss, s, batch, KEY, 3, adapter))(state)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(a[:, 0] - a[:, 1]).max()) > 0  # the perturbation did something


def test_adapter_path_never_forms_perturbed_weights():
    """On the adapter path, each linear sees a Perturbed leaf with an unbatched base."""
    seen = []

    def loss(params, batch):
        seen.append(params["w"])
        return jnp.sum(nn.dense(batch, params["w"]))

    spec = zojax.ZOSpec(noise=LowRank(rank=1), members=3, adapter=True)
    zojax.score(loss, {"w": jnp.ones((4, 2))}, jnp.ones((1, 4)), KEY, 0, spec)
    assert isinstance(seen[0], nn.Perturbed)
    assert seen[0].base.shape == (4, 2)  # the shared base, not one copy per member


def _scoring_temp_bytes(adapter: bool) -> int:
    def loss(params, batch):
        return jnp.sum(nn.dense(batch, params["w"]))

    spec = zojax.ZOSpec(noise=LowRank(rank=1), members=8, adapter=adapter)
    w = jnp.ones((256, 256))
    compiled = jax.jit(lambda p, b: zojax.score(loss, p, b, KEY3, 0, spec)).lower({"w": w}, jnp.ones((2, 256))).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_adapter_path_never_forms_perturbed_weights_in_the_compiled_program():
    weight_bytes = 256 * 256 * 4
    assert _scoring_temp_bytes(adapter=True) < weight_bytes  # less than one copy of w for 16 scored states
    assert _scoring_temp_bytes(adapter=False) >= 8 * weight_bytes  # the measure sees per-member copies


def test_frozen_leaves_are_not_perturbed():
    def loss(params, batch):
        return jnp.sum(params["w"]) + 100 * jnp.sum(params["frozen"])

    spec = zojax.ZOSpec(members=3, scope="^w$")
    losses = zojax.score(loss, {"w": jnp.zeros(4), "frozen": jnp.ones(4)}, None, KEY, 0, spec)
    np.testing.assert_allclose(losses.sum(1) / 2, 400.0, rtol=1e-5)  # ±eps cancels; frozen part constant


def test_one_sided_losses_put_the_perturbed_loss_first():
    spec = zojax.ZOSpec(noise=Gaussian(), eps=0.5, members=3, sided="one")
    losses = zojax.score(bowl, {"w": jnp.zeros(4)}, jnp.ones(4), KEY3, 0, spec)
    np.testing.assert_allclose(losses[:, 1], 4.0)  # the base loss is the reference column
    assert not np.allclose(losses[:, 0], 4.0)


def test_non_scalar_loss_is_refused_with_its_shape():
    spec = zojax.ZOSpec(members=2)
    with pytest.raises(ValueError, match=r"scalar loss per member; it returned shape \(4,\)"):
        zojax.score(lambda p, b: (p["w"] - b) ** 2, {"w": jnp.zeros(4)}, jnp.ones(4), KEY3, 0, spec)
    with pytest.raises(ValueError, match="scalar loss"):
        zojax.score(lambda p, b: (p["w"] - b) ** 2, {"w": jnp.zeros(4)}, jnp.ones(4), KEY3, 0,
                    zojax.ZOSpec(members=2, sided="one"))


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        (dict(eps=-1.0), "eps"),
        (dict(members=0), "members"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(sided="three"), "sided"),
    ],
)
def test_bad_spec_names_the_argument(kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        zojax.ZOSpec(**kwargs)


def test_mismatched_pytrees_are_reported():
    spec = zojax.ZOSpec()
    trainable, frozen = zojax.partition({"a": jnp.ones(2), "b": jnp.ones(2)}, "a")
    with pytest.raises(ValueError, match="do not match"):
        zojax.score(lambda p, b: 0.0, {"a": jnp.ones(2)}, None, KEY, 0, spec, frozen=frozen)
