"""zojax.optim.transforms: zo_sgd (decay, bound), densify, LoZO-M against its recursion written out."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import zojax
from zojax.directions import Factorized, Gaussian, LowRank, LowRankDirection

from ..problems import least_squares

KEY = jax.random.PRNGKey(0)
KEY3 = jax.random.PRNGKey(3)


def test_zo_sgd_weight_decay_skips_vectors():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grad = zojax.ZOGrad(KEY, jnp.int32(0), jnp.zeros(1), Gaussian())
    opt = zojax.zo_sgd(0.1, weight_decay=0.5)
    upd, _ = opt.update(grad, opt.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.05)
    np.testing.assert_allclose(upd["b"], 0.0)


def test_lozo_m_keeps_factored_momentum_and_reduces_loss():
    loss, params, batch = least_squares()
    params = {"w": params["w"].reshape(8, 1)}
    lsq = lambda p, b: jnp.mean((b["x"] @ p["w"][:, 0] - b["y"]) ** 2)  # noqa: E731
    noise = LowRank(rank=1, refresh_every=5)
    opt = zojax.lozo_m(0.01, beta=0.5, noise=noise, members=4)
    spec = zojax.ZOSpec(noise=noise, members=4)
    state, frozen = zojax.init(params, spec, opt, KEY)
    assert state.opt_state.momentum["w"].shape == (4, 1, 1)  # (K, d_out, r), not (d_in, d_out)
    initial = float(lsq(params, batch))
    batches = jax.tree.map(lambda x: jnp.broadcast_to(x, (200,) + x.shape), batch)
    state, _ = zojax.run_steps(state, frozen, batches, loss_fn=lsq, spec=spec, optimizer=opt)
    assert float(lsq(zojax.combine(state.params, frozen), batch)) < initial / 10


def test_lozo_m_requires_lowrank_noise():
    with pytest.raises(ValueError, match="LowRank"):
        zojax.lozo_m(0.1, noise=Gaussian(), members=1)


def _reference_lozo_m(leaves, coeff_steps, *, noise, lr, beta, wd, steps=None):
    """The official LoZO-M recursion (K members averaged), written plainly with numpy; ``steps`` are
    the steps that reached the optimiser (default: every step from 0)."""
    w = {p: np.array(x, np.float64) for p, x in leaves.items()}
    momentum, last = {}, None
    for step, coeffs in zip(range(len(coeff_steps)) if steps is None else steps, coeff_steps):
        k = len(coeffs)
        for path, x in w.items():
            dirs = [noise.draw(KEY3, step, m, path, x.shape, jnp.float32) for m in range(k)]
            if isinstance(dirs[0], LowRankDirection):
                v = [np.asarray(d.v, np.float64) for d in dirs]
                u = [np.asarray(d.u, np.float64) for d in dirs]
                if last is None:
                    n = [coeffs[m] * u[m] for m in range(k)]
                else:
                    n = momentum[path]
                    if step // noise.refresh_every != last // noise.refresh_every:
                        v_old = [np.asarray(noise.draw(KEY3, last, m, path, x.shape, jnp.float32).v)
                                 for m in range(k)]
                        n = [n[m] @ v_old[m].T @ v[m] / x.shape[0] for m in range(k)]
                    n = [beta * n[m] + (1 - beta) * coeffs[m] * u[m] for m in range(k)]
                momentum[path] = n
                update = sum(v[m] @ n[m].T for m in range(k)) / k + wd * x
            else:
                estimate = sum(coeffs[m] * np.asarray(dirs[m], np.float64) for m in range(k)) / k
                n = estimate if last is None else beta * momentum[path] + (1 - beta) * estimate
                momentum[path] = n
                update = n  # no decay on vectors
            w[path] = x - lr * update
        last = step
    return w


def test_lozo_m_follows_the_official_recursion():
    noise = LowRank(rank=2, refresh_every=2)
    leaves = {"w": jax.random.normal(KEY3, (4, 3)), "b": jnp.linspace(-1, 1, 3)}
    coeff_steps = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (6, 3)))  # K = 3, three V windows
    lr, beta, wd = 0.1, 0.7, 0.2
    opt = zojax.lozo_m(lr, beta, wd, noise=noise, members=3)
    params, state = dict(leaves), opt.init(leaves)
    for step, coeffs in enumerate(coeff_steps):
        grad = zojax.ZOGrad(KEY3, jnp.int32(step), jnp.asarray(coeffs, jnp.float32), noise)
        updates, state = opt.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    want = _reference_lozo_m(leaves, coeff_steps, noise=noise, lr=lr, beta=beta, wd=wd)
    for path in leaves:
        np.testing.assert_allclose(params[path], want[path], rtol=2e-5, atol=2e-6, err_msg=path)


def test_lozo_m_reprojects_when_the_first_step_of_a_window_was_skipped():
    """A skipped step (a non-finite loss) never reaches the optimiser: after steps 0 and 1 the next
    update may be step 3, the first one of its V window the optimiser sees. Its momentum must still be
    re-projected onto the new V (the window changed), though ``3 % refresh_every != 0``."""
    noise = LowRank(rank=2, refresh_every=2)
    leaves = {"w": jax.random.normal(KEY3, (4, 3)), "b": jnp.linspace(-1, 1, 3)}
    steps = [0, 1, 3, 4, 7, 8]  # steps 2 and 6, each the first of a window, skipped
    coeff_steps = np.asarray(jax.random.normal(jax.random.PRNGKey(9), (len(steps), 3)))
    lr, beta, wd = 0.1, 0.7, 0.2
    opt = zojax.lozo_m(lr, beta, wd, noise=noise, members=3)
    params, state = dict(leaves), opt.init(leaves)
    for step, coeffs in zip(steps, coeff_steps):
        grad = zojax.ZOGrad(KEY3, jnp.int32(step), jnp.asarray(coeffs, jnp.float32), noise)
        updates, state = opt.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    want = _reference_lozo_m(leaves, coeff_steps, noise=noise, lr=lr, beta=beta, wd=wd, steps=steps)
    for path in leaves:
        np.testing.assert_allclose(params[path], want[path], rtol=2e-5, atol=2e-6, err_msg=path)


def test_non_finite_eps_and_learning_rates_are_refused():
    with pytest.raises(ValueError, match="eps must be a finite number"):
        zojax.ZOSpec(eps=float("inf"))
    for make in (lambda lr: zojax.zo_sgd(lr), lambda lr: zojax.lozo_m(lr, noise=LowRank(), members=1)):
        with pytest.raises(ValueError, match="learning_rate must be a finite number"):
            make(float("inf"))
        with pytest.raises(ValueError, match="learning_rate must be a finite number"):
            make(float("nan"))


@pytest.mark.parametrize("noise", [Gaussian(), zojax.Rademacher(), LowRank(rank=2), Factorized(rank=4)],
                         ids=["gaussian", "rademacher", "lowrank", "factorized"])
def test_zo_sgd_bounds_its_new_weights_without_regenerating_directions(noise):
    from zojax.optim.transforms import update_bound

    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=5), jnp.float32)}
    for lr, wd in ((0.3, 0.0), (2.0, 0.5)):
        opt = zojax.zo_sgd(lr, weight_decay=wd)
        for step in range(5):
            grad = zojax.ZOGrad(KEY3, jnp.int32(step), jnp.asarray(rng.normal(size=3) * 10, jnp.float32), noise)
            updates, _ = opt.update(grad, opt.init(params), params)
            new = optax.apply_updates(params, updates)
            largest = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(new))
            assert largest <= float(update_bound(opt, grad, opt.init(params), params))


def test_the_bound_is_zo_sgds_own_and_a_wrapper_drops_it():
    """zo_sgd's bound is a typed capability (BoundedTransformation); optax.chain and masked give a plain
    transformation without one, and the step then checks the update exactly (the "chained" case above)."""
    from zojax.optim import BoundedTransformation, update_bound

    opt, params = zojax.zo_sgd(0.1), {"w": jnp.ones(3)}
    grad = zojax.ZOGrad(KEY3, jnp.int32(0), jnp.ones(2), Gaussian())
    assert isinstance(opt, BoundedTransformation)
    assert update_bound(opt, grad, opt.init(params), params) is not None
    for wrapped in (optax.chain(opt), optax.masked(opt, {"w": True})):
        assert update_bound(wrapped, grad, wrapped.init(params), params) is None
