"""zojax.estimators: loss differences to coefficients, and fitness shaping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax.directions import Gaussian
from zojax.estimators import ESTIMATORS, SIDED_ONLY, centered_rank, shaped

from ..problems import NOISES, QUAD_BATCH, quad_params, quadratic

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


def bowl(params, batch):
    return jnp.sum((params["w"] - batch) ** 2)


def test_two_sided_gaussian_estimator_is_unbiased_on_quadratic():
    params = quad_params()
    spec = zojax.ZOSpec(noise=Gaussian(), eps=1e-3, members=4000)
    losses = zojax.score(quadratic, params, QUAD_BATCH, KEY, 0, spec)
    grad = zojax.ZOGrad(KEY, jnp.int32(0), spec.coefficients(losses), spec.noise)
    est = zojax.dense_gradient(grad, params)
    true = jax.grad(quadratic)(params, QUAD_BATCH)
    for name in params:
        # per coordinate, the estimator's std is about |grad| * sqrt(dim / K)
        tol = 5 * float(jnp.linalg.norm(jnp.concatenate([t.ravel() for t in jax.tree.leaves(true)]))) / np.sqrt(4000)
        np.testing.assert_allclose(est[name], true[name], atol=tol)


def test_directional_derivative_is_exact_on_linear_loss():
    c = jnp.arange(12.0).reshape(3, 4)

    def linear(params, batch):
        return jnp.sum(c * params["m"])

    for noise in NOISES:
        spec = zojax.ZOSpec(noise=noise, eps=0.5, members=3)
        losses = zojax.score(linear, {"m": jnp.zeros((3, 4))}, None, KEY, 1, spec)
        fwd = zojax.forward_gradient(linear, {"m": jnp.zeros((3, 4))}, None, KEY, 1, spec)
        np.testing.assert_allclose(spec.coefficients(losses), fwd.coeffs, rtol=1e-4)


def test_one_sided_directional_derivative_is_exact_on_linear_loss():
    """A forward difference of a linear loss is its directional derivative, as jax.jvp computes it."""
    c = jnp.arange(12.0).reshape(3, 4)

    def linear(params, batch):
        return jnp.sum(c * params["m"])

    for noise in NOISES:
        spec = zojax.ZOSpec(noise=noise, eps=0.5, members=3, sided="one")
        losses = zojax.score(linear, {"m": jnp.zeros((3, 4))}, None, KEY, 1, spec)
        fwd = zojax.forward_gradient(linear, {"m": jnp.zeros((3, 4))}, None, KEY, 1, spec)
        np.testing.assert_allclose(spec.coefficients(losses), fwd.coeffs, rtol=1e-4)


def test_shaped_estimators_halve_the_shaped_difference():
    """``c_k = (f(L+)_k - f(L-)_k) / 2`` with all 2K losses shaped jointly: ranks and z-scores
    recomputed here with numpy."""
    losses = np.random.default_rng(5).permutation(10).reshape(5, 2) * 0.37 - 1.0
    flat = losses.ravel()
    ranks = (np.argsort(np.argsort(flat)) / (flat.size - 1) - 0.5).reshape(5, 2)
    z = ((flat - flat.mean()) / flat.std()).reshape(5, 2)
    for name, f in (("rank", ranks), ("zscore", z)):
        got = zojax.estimators.ESTIMATORS[name](jnp.asarray(losses, jnp.float32), 1e-3)
        np.testing.assert_allclose(got, (f[:, 0] - f[:, 1]) / 2, rtol=1e-5, atol=1e-6, err_msg=name)


def test_fitness_shaping():
    losses = jnp.array([[1.0, 2.0], [5.0, 0.0]])
    np.testing.assert_allclose(zojax.centered_rank(losses), [[-1 / 6, 1 / 6], [0.5, -0.5]], rtol=1e-6)
    np.testing.assert_allclose(zojax.zscore(losses).std(), 1.0, rtol=1e-5)
    assert zojax.estimators.ESTIMATORS["sign"](losses, 1.0).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        zojax.ZOSpec(estimator="nope")


@pytest.mark.parametrize("sided", ["two", "one"])
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_sided_estimator_pair_descends_or_is_refused(sided, estimator):
    if SIDED_ONLY.get(estimator, sided) != sided:
        with pytest.raises(ValueError, match=f"estimator '{estimator}' needs sided"):
            zojax.ZOSpec(sided=sided, estimator=estimator)
        return
    spec = zojax.ZOSpec(noise=Gaussian(), eps=1e-3, members=4, sided=sided, estimator=estimator)
    lr = {"two_sided": 0.05, "one_sided": 0.05, "sign": 0.02, "zscore": 0.02, "rank": 0.1, "fzoo": 0.02}[estimator]
    opt = zojax.zo_sgd(lr)
    state, frozen = zojax.init({"w": jnp.zeros(4)}, spec, opt, KEY3)
    target = jnp.ones(4)
    for _ in range(60):
        state, info = zojax.step(state, frozen, target, loss_fn=bowl, spec=spec, optimizer=opt)
    assert float(bowl(state.params, target)) < 0.5 * float(bowl({"w": jnp.zeros(4)}, target))


def test_tied_losses_get_equal_ranks_and_no_signal():
    assert centered_rank(jnp.full((3, 2), 0.7)).tolist() == [[0.0, 0.0]] * 3
    np.testing.assert_array_equal(shaped(centered_rank)(jnp.ones((4, 2)), 1e-3), 0.0)
    ranks = centered_rank(jnp.array([2.0, 1.0, 2.0, 0.0]))
    assert ranks[0] == ranks[2] and ranks[0] > ranks[1] > ranks[3]
    # one-sided with a 0/1 objective: members whose perturbation changed nothing get zero
    coeffs = shaped(centered_rank)(jnp.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]), 1e-3)
    assert coeffs[0] == coeffs[2] == 0.0 and coeffs[1] < 0
