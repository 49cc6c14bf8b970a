"""Perturbations and updates that survive bfloat16: the resolution check, float32 master copies of
16-bit stored weights, and 1-D leaves computed in float32 by zojax's models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax.errors import ResolutionError
from zojax.models import layers
from zojax.optim import ZOGrad, dense_gradient
from zojax.precision import check_resolution, leaf_compute_dtypes, resolution, stochastic_round
from zojax.seedlog import SeedLog, replay

KEY = jax.random.PRNGKey(0)
# A norm scale of SmolLM2's final RMSNorm (median 1.78): bfloat16's spacing there is 0.0078.
SCALE = 1.78


def _norm_params():
    return {"layers": {"norm": {"scale": jnp.full((2, 64), SCALE)}, "q": {"kernel": jnp.full((2, 8, 8), 0.002)}},
            "norm": {"scale": jnp.full(64, SCALE)}}


def test_resolution_check_fires_on_an_unresolved_leaf_and_names_it():
    spec = zojax.ZOSpec(eps=1e-3)
    with pytest.raises(ResolutionError) as caught:
        check_resolution(_norm_params(), spec, jnp.bfloat16)
    message = str(caught.value)
    assert "\n" not in message
    assert "bfloat16" in message and "eps 0.001" in message and "float32" in message and "larger eps" in message
    worst = max(resolution(_norm_params(), spec, jnp.bfloat16).items(), key=lambda kv: kv[1])
    assert f"leaf {worst[0]!r}: {worst[1]:.1%}" in message
    assert "1 more leaves" in message  # both norm scales fail; the kernel (|w| = 0.002) resolves


def test_resolution_check_passes_where_the_model_computes_vectors_in_float32():
    rule = leaf_compute_dtypes(jnp.bfloat16, stacked="^layers/")
    fractions = check_resolution(_norm_params(), zojax.ZOSpec(eps=1e-3), rule)
    assert fractions == {"layers/norm/scale": 0.0, "layers/q/kernel": 0.0, "norm/scale": 0.0}
    # the other way out: an eps above the spacing
    assert max(resolution(_norm_params(), zojax.ZOSpec(eps=1e-2), jnp.bfloat16).values()) == 0.0


def test_resolution_check_sees_low_rank_directions_and_one_sided_steps():
    w = {"w": jnp.full((16, 16), SCALE)}
    lowrank = zojax.ZOSpec(noise=zojax.LowRank(rank=2), eps=1e-3)
    assert resolution(w, lowrank, jnp.bfloat16)["w"] == 1.0
    # rank 2: each entry of V U^T has std sqrt(2), so eps 3e-3 resolves it (3e-3 alone would not: 1.78 +- 3e-3 rounds to 1.78)
    assert resolution(w, zojax.ZOSpec(noise=zojax.LowRank(rank=2), eps=3e-3), jnp.bfloat16)["w"] == 0.0
    assert resolution(w, lowrank, jnp.float32)["w"] == 0.0
    one = zojax.ZOSpec(eps=1e-3, sided="one")
    assert resolution(w, one, jnp.bfloat16)["w"] == 1.0


@pytest.mark.parametrize("stored", [jnp.bfloat16, jnp.float16])
def test_updates_below_a_16_bit_weights_spacing_accumulate(stored):
    """Each update (about 1e-5) is far below the spacing of a weight near 1.78 (0.0078 in bfloat16,
    0.001 in float16): stored in 16 bits, every step would round back to the same weight. The
    float32 master copy moves by the sum of the updates, as a float32 replay of the coefficients says."""
    w0 = jnp.full(256, SCALE, stored)
    target = jnp.linspace(-1.0, 3.0, 256)
    loss = lambda p, b: jnp.mean((p["w"].astype(jnp.float32) - b) ** 2)  # noqa: E731
    spec, lr, steps = zojax.ZOSpec(eps=1e-2, master_weights=True), 2e-5, 30
    opt = zojax.zo_sgd(lr)
    state, frozen = zojax.init({"w": w0}, spec, opt, KEY)
    assert state.params["w"].dtype == jnp.float32
    state, infos = zojax.make_step(loss, spec, opt).run_steps(state, frozen, jnp.broadcast_to(target, (steps, 256)))
    expected = np.zeros(256)
    for t in range(steps):
        g = dense_gradient(ZOGrad(state.key, jnp.int32(t), infos.coeffs[t], spec.noise), {"w": jnp.zeros(256)})
        expected -= lr * np.asarray(g["w"], np.float64)
    moved = np.asarray(state.params["w"], np.float64) - np.asarray(w0, np.float64)
    assert np.all(np.abs(expected) < float(jnp.finfo(stored).eps) * SCALE / 2)  # each would vanish in `stored`
    assert np.mean(np.abs(moved)) == pytest.approx(np.mean(np.abs(expected)), rel=1e-3)
    np.testing.assert_allclose(moved, expected, atol=1e-6)


def test_frozen_leaves_keep_their_stored_dtype():
    params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16), "c": jnp.ones(4, jnp.float32)}
    state, frozen = zojax.init(params, zojax.ZOSpec(scope="^[ac]", master_weights=True), zojax.zo_sgd(0.1), KEY)
    assert state.params["a"].dtype == jnp.float32 and state.params["c"].dtype == jnp.float32
    assert frozen["b"].dtype == jnp.bfloat16


def test_masters_by_default_only_where_they_are_cheap():
    """Float32 copies of a small trained share of 16-bit weights cost little and are kept; for a
    full-parameter run they would double the weights' memory, so its leaves stay 16-bit."""
    params = {"big": jnp.zeros((64, 64), jnp.bfloat16), "scale": jnp.ones(64, jnp.bfloat16)}
    opt = zojax.zo_sgd(0.1)
    small, _ = zojax.init(dict(params), zojax.ZOSpec(scope="scale"), opt, KEY)
    full, _ = zojax.init(dict(params), zojax.ZOSpec(), opt, KEY)
    assert small.params["scale"].dtype == jnp.float32 and small.params["big"] is None
    assert full.params["big"].dtype == jnp.bfloat16 and full.params["scale"].dtype == jnp.bfloat16


def test_stochastic_round_is_unbiased_and_stays_on_neighbours():
    x = jnp.asarray(np.random.default_rng(0).normal(size=20000) * 3, jnp.float32)
    r = stochastic_round(x, jnp.bfloat16, KEY)
    assert r.dtype == jnp.bfloat16
    near = x.astype(jnp.bfloat16)
    above = near.astype(jnp.float32) > x
    f32 = lambda a: np.asarray(a.astype(jnp.float32))  # noqa: E731
    lo = f32(jnp.where(above, jnp.nextafter(near, jnp.bfloat16(-jnp.inf)), near))
    hi = f32(jnp.where(above, near, jnp.nextafter(near, jnp.bfloat16(jnp.inf))))
    got = f32(r)
    assert np.all((got == lo) | (got == hi))  # one of the two neighbours of x
    # unbiased: the mean rounding error, in units of each entry's gap, is 0 within 5 standard errors
    err = (got - np.asarray(x)) / np.where(hi > lo, hi - lo, 1.0)
    assert abs(np.mean(err)) < 5 * 0.5 / np.sqrt(x.size)
    assert np.array_equal(np.asarray(r), np.asarray(stochastic_round(x, jnp.bfloat16, KEY)))  # a function of the key


@pytest.mark.parametrize("stored", [jnp.bfloat16, jnp.float16])
def test_16_bit_weights_without_masters_move_by_the_updates_on_average(stored):
    """The same sub-spacing updates as above, with the weights kept in 16 bits: round-to-nearest would
    leave every weight where it was; stochastic rounding moves them by the updates' sum on average,
    and a replay from the seed log rounds identically (bitwise)."""
    w0 = jnp.full(4096, SCALE, stored)
    target = jnp.full(4096, 3.0)
    loss = lambda p, b: jnp.mean((p["w"].astype(jnp.float32) - b) ** 2)  # noqa: E731
    spec, lr, steps = zojax.ZOSpec(eps=1e-2, master_weights=False), 2e-3, 20
    opt = zojax.zo_sgd(lr)
    state, frozen = zojax.init({"w": jnp.copy(w0)}, spec, opt, KEY)
    assert state.params["w"].dtype == stored
    log = SeedLog.new(KEY, spec)
    state, infos = zojax.make_step(loss, spec, opt).run_steps(state, frozen, jnp.broadcast_to(target, (steps, 4096)))
    log.record(infos.step, infos.coeffs, infos.applied)
    expected = np.zeros(4096)
    for t in range(steps):
        # the directions of a 16-bit leaf are drawn in its dtype
        g = dense_gradient(ZOGrad(state.key, jnp.int32(t), infos.coeffs[t], spec.noise), {"w": jnp.zeros(4096, stored)})
        expected -= lr * np.asarray(g["w"], np.float64)
    moved = np.asarray(state.params["w"], np.float64) - np.asarray(w0, np.float64)
    assert np.all(np.abs(expected / steps) < float(jnp.finfo(stored).eps) * SCALE / 2)  # a step's update would vanish
    # unbiased: regressed on the float64 sum of the updates, the moves have slope 1 (its standard error
    # here is about 0.07: rounding noise of about sqrt(spacing * |sum|) per weight over 4096 weights)
    assert np.dot(moved, expected) / np.dot(expected, expected) == pytest.approx(1.0, abs=0.3)
    replayed = replay({"w": jnp.copy(w0)}, log, opt)["w"]
    assert replayed.dtype == stored and np.array_equal(np.asarray(replayed), np.asarray(state.params["w"]))


def test_models_compute_vector_leaves_in_float32_under_bfloat16():
    """±1e-3 on a norm scale near 1.78 or on a bias changes the bfloat16 output of the norm or the
    linear layer: the perturbation reaches the loss."""
    x = jax.random.normal(KEY, (4, 64), jnp.bfloat16)
    scale = jnp.full(64, SCALE)
    plus, minus = layers.rms_norm(x, scale + 1e-3, 1e-6), layers.rms_norm(x, scale - 1e-3, 1e-6)
    assert plus.dtype == jnp.bfloat16
    assert np.mean(np.asarray(plus != minus)) > 0.1
    p = {"kernel": jax.random.normal(KEY, (64, 32), jnp.bfloat16), "bias": jnp.full(32, SCALE)}
    y_plus = layers.linear(x, {**p, "bias": p["bias"] + 1e-3})
    y_minus = layers.linear(x, {**p, "bias": p["bias"] - 1e-3})
    assert y_plus.dtype == jnp.bfloat16
    assert np.any(np.asarray(y_plus != y_minus))
    ln = layers.layer_norm(x, {"scale": scale + 1e-3}, jnp.bfloat16, 1e-5)
    assert np.mean(np.asarray(ln != layers.layer_norm(x, {"scale": scale - 1e-3}, jnp.bfloat16, 1e-5))) > 0.1


@pytest.mark.parametrize("given_tokens", [False, True])
def test_a_bfloat16_models_finite_difference_on_the_final_norm_is_its_derivative(given_tokens):
    """The default recipe's coefficient under bfloat16: (L(s + eps z) - L(s - eps z)) / 2 eps on the final
    norm scale s equals the same model's directional derivative (jvp), for whole-vocabulary logits (the
    head sees h's high and low bfloat16 parts) and given tokens' logits. Rounding h to bfloat16 before the
    head made the two differ by about 20% (0.687 against 0.576 on SmolLM2's first default step)."""
    from flax import nnx

    from zojax.models import llama

    c = llama.Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
    graphdef, state = nnx.split(llama.Model(c, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    ids = jax.random.randint(KEY, (8, 12), 0, 512)
    targets = jax.random.randint(jax.random.PRNGKey(1), (8,), 0, 512)
    tokens = jnp.stack([targets, (targets + 1) % 512], -1)[:, None]  # (B, 1, 2): two options per example

    def loss(scale):
        p = {**params, "norm": {"scale": scale}}
        last = jnp.full((8, 1), 11)
        if given_tokens:
            logits = llama.apply(c, p, ids, logits_positions=last, logits_tokens=tokens, dtype=jnp.bfloat16)[:, 0]
            return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])
        logits = llama.apply(c, p, ids, logits_positions=last, dtype=jnp.bfloat16)[:, 0]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], -1))

    scale = jnp.full(64, SCALE)
    eps = 1e-3
    coeffs, derivatives = [], []
    for i in range(8):
        z = jax.random.normal(jax.random.PRNGKey(10 + i), (64,))
        coeffs.append(float((loss(scale + eps * z) - loss(scale - eps * z)) / (2 * eps)))
        derivatives.append(float(jax.jvp(loss, (scale,), (z,))[1]))
    np.testing.assert_allclose(coeffs, derivatives, rtol=0.02, atol=0.02 * np.max(np.abs(derivatives)))
