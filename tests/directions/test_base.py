"""The direction-kind contract, run over every registered kind (zojax.directions.registry.KINDS).

A kind added with its module and one registry line is covered here without another test."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax import directions, nn
from zojax.directions import KINDS, DirectionKind, kind_from_dict
from zojax.paths import leaf_key

KEY = jax.random.PRNGKey(11)
SHAPES = {"w": (6, 5), "b": (5,)}  # a matrix (low-rank kinds factor it) and a vector (always dense)
ALL = pytest.mark.parametrize("kind", [cls() for cls in KINDS.values()], ids=list(KINDS))


def _dense(d) -> np.ndarray:
    return np.asarray(d.dense() if directions.is_factored(d) else d, np.float64)


def _params():
    return {"w": jnp.linspace(-1.0, 1.0, 30).reshape(SHAPES["w"]), "b": jnp.linspace(0.5, -0.5, 5)}


def test_every_kind_is_registered():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    assert set(subclasses(DirectionKind)) == set(KINDS.values())
    assert set(directions.METHODS) == {"mezo", "lozo", "factorized"}  # what a config's zo.method can name


@ALL
def test_rows_equal_the_full_draw(kind):
    shape, rows = (5, 4, 3), jnp.array([4, 0, 2])
    for dtype in (jnp.float32, jnp.bfloat16):
        full = kind.dense(KEY, shape, dtype)
        assert full.shape == shape and full.dtype == dtype
        np.testing.assert_array_equal(np.asarray(kind.dense_rows(KEY, shape, dtype, rows)), np.asarray(full[rows]))
        one = jax.jit(lambda i, dtype=dtype: kind.dense_rows(KEY, shape, dtype, i))(jnp.int32(3))
        np.testing.assert_array_equal(np.asarray(one), np.asarray(full[3]))


@ALL
def test_directions_replay_from_their_seeds(kind):
    for path, shape in SHAPES.items():
        @jax.jit
        def draws(step, member, path=path, shape=shape):
            return kind.draw(KEY, step, member, path, shape, jnp.float32)

        a = _dense(draws(7, 1))
        np.testing.assert_array_equal(a, _dense(draws(7, 1)))
        assert not np.allclose(a, _dense(draws(7, 2)))  # another member
        assert not np.allclose(a, _dense(draws(8, 1)))  # another step
        members = jax.jit(lambda path=path, shape=shape: kind.draw_members(KEY, 7, 3, path, shape, jnp.float32))()
        np.testing.assert_array_equal(_dense(jax.tree.map(lambda x: x[1], members)), a)


@ALL
def test_a_seed_log_replays_a_run_bitwise(kind):
    def loss(p, b):
        return jnp.sum((p["w"] - b) ** 2) + jnp.sum(p["b"] ** 2)

    spec, opt = zojax.ZOSpec(noise=kind, eps=1e-2, members=2), zojax.zo_sgd(0.01)
    state, frozen = zojax.init(jax.tree.map(jnp.copy, _params()), spec, opt, KEY)
    log = zojax.SeedLog.new(KEY, spec)
    state, infos = zojax.make_step(loss, spec, opt).run_steps(state, frozen, jnp.ones((3, *SHAPES["w"])))
    log.record(infos.step, infos.coeffs, infos.applied)
    loaded = zojax.SeedLog(*map(json.loads, (json.dumps(log.header), json.dumps(log.entries))))
    assert loaded.spec().noise == kind
    replayed = zojax.replay(_params(), loaded, opt)
    for name in SHAPES:
        np.testing.assert_array_equal(np.asarray(replayed[name]), np.asarray(state.params[name]))


@ALL
def test_to_dict_round_trip(kind):
    described = json.loads(json.dumps(kind.to_dict()))
    assert described["kind"] == type(kind).__name__
    assert kind_from_dict(described) == kind


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown noise kind 'Sparse'"):
        kind_from_dict({"kind": "Sparse"})


@ALL
def test_max_abs_bounds_every_draw(kind):
    for path, shape in SHAPES.items():
        for dtype in (jnp.float32, jnp.bfloat16):
            z = jax.jit(lambda path=path, shape=shape, dtype=dtype: kind.draw_members(KEY, 3, 128, path, shape, dtype))()
            assert np.max(np.abs(_dense(z))) <= kind.max_abs


@ALL
def test_unbiased_on_a_quadratic(kind):
    """Two-sided differences are exact on a quadratic (c_k = z_k . g), so ``mean_k c_k z_k`` estimates
    ``E[z z^T] g = second_moment * g`` for each leaf."""
    a = {"w": jnp.linspace(0.5, 2.0, 30).reshape(SHAPES["w"]), "b": jnp.linspace(1.0, 3.0, 5)}

    def loss(p, batch):
        return sum(jnp.sum(0.5 * a[k] * p[k] ** 2 + batch[k] * p[k]) for k in p)

    params, batch = _params(), {"w": jnp.full(SHAPES["w"], 0.3), "b": jnp.full(SHAPES["b"], -0.2)}
    spec = zojax.ZOSpec(noise=kind, eps=1e-2, members=4096)

    @jax.jit
    def estimate():
        coeffs = spec.coefficients(zojax.score(loss, params, batch, KEY, 0, spec))
        return zojax.dense_gradient(zojax.ZOGrad(KEY, jnp.int32(0), coeffs, kind), params)

    got = estimate()
    for name in SHAPES:
        want = kind.second_moment(name, SHAPES[name]) * np.asarray(a[name] * params[name] + batch[name])
        err = np.linalg.norm(np.asarray(got[name]) - want) / np.linalg.norm(want)
        assert err < 0.3, (name, err)  # about 0.1 at 4096 members; a wrong scale or sign is off by 0.4 or more


@ALL
def test_gradient_is_the_mean_of_the_members_directions(kind):
    coeffs = jnp.array([0.5, -1.0, 2.0])
    for path, shape in SHAPES.items():
        x = jnp.zeros(shape)
        got = kind.gradient(KEY, 4, coeffs, path, x)
        draws = [_dense(kind.draw(KEY, 4, m, path, shape, jnp.float32)) for m in range(3)]
        want = sum(float(c) * d for c, d in zip(coeffs, draws)) / 3
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


@ALL
def test_perturb_dense_adapter_and_lazy_agree(kind):
    x, scale = _params(), 0.25
    for path, shape in SHAPES.items():
        d = kind.draw(KEY, 2, 1, path, shape, jnp.float32)
        dense = np.asarray(kind.perturb(x[path], d, scale))
        np.testing.assert_allclose(dense, np.asarray(x[path]) + scale * _dense(d), rtol=1e-6, atol=1e-6)
        adapter = nn.materialize(kind.perturb(x[path], d, scale, adapter=True))
        np.testing.assert_allclose(np.asarray(adapter), dense, rtol=1e-6, atol=1e-6)
        if not directions.is_factored(d):  # a dense direction left to the model: drawn from the leaf key
            lazy = kind.perturb(x[path], d, scale, key=leaf_key(KEY, 2, 1, path))
            assert isinstance(lazy, nn.Noisy)
            np.testing.assert_array_equal(np.asarray(nn.materialize(lazy)), dense)
