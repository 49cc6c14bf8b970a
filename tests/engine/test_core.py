"""The engine: directions, scoring, estimators, updates, step, replay."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import zojax
from zojax import nn
from zojax.directions import Factorized, Gaussian, LowRank, Rademacher
from zojax.toy import ToyMLP, toy_classification

KEY = jax.random.PRNGKey(0)
NOISES = [Gaussian(), Rademacher(), LowRank(rank=2, refresh_every=3), Factorized(rank=4)]


def quadratic(params, batch):
    return 0.5 * jnp.sum(batch["a"] * params["w"] ** 2) + jnp.sum(params["m"] ** 2) + jnp.sum(params["b"])


def quad_params():
    return {"w": jnp.linspace(-1, 1, 6), "m": jnp.ones((3, 4)) * 0.5, "b": jnp.zeros(2)}


QUAD_BATCH = {"a": jnp.linspace(0.5, 2.0, 6)}


# --- directions ---------------------------------------------------------------------------


def test_leaf_noise_independent_of_other_leaves_and_order():
    spec_noise = Gaussian()
    small = {"x": jnp.zeros((5, 3))}
    bigger = {"a_new": jnp.zeros(7), "x": jnp.zeros((5, 3)), "z": {"deep": jnp.zeros(2)}}
    d1 = zojax.draw_directions(small, spec_noise, KEY, 4, 1)["x"]
    d2 = zojax.draw_directions(bigger, spec_noise, KEY, 4, 1)["x"]
    np.testing.assert_array_equal(d1, d2)
    # a different member or step gives different noise
    assert not np.allclose(d1, zojax.draw_directions(small, spec_noise, KEY, 4, 2)["x"])
    assert not np.allclose(d1, zojax.draw_directions(small, spec_noise, KEY, 5, 1)["x"])


def test_two_leaves_are_uncorrelated():
    tree = {"a": jnp.zeros(20000), "b": jnp.zeros(20000)}
    d = zojax.draw_directions(tree, Gaussian(), KEY, 0, 0)
    corr = np.corrcoef(np.asarray(d["a"]), np.asarray(d["b"]))[0, 1]
    assert abs(corr) < 4 / np.sqrt(20000)
    assert abs(float(d["a"].std()) - 1.0) < 0.03


def test_lowrank_v_is_lazy_and_u_fresh():
    noise = LowRank(rank=2, refresh_every=4)
    get = lambda t: noise.draw(KEY, t, 0, "w", (6, 5), jnp.float32)  # noqa: E731
    d0, d3, d4 = get(0), get(3), get(4)
    np.testing.assert_array_equal(d0.v, d3.v)
    assert not np.allclose(d0.u, d3.u)
    assert not np.allclose(d3.v, d4.v)
    assert d0.v.shape == (6, 2) and d0.u.shape == (5, 2)


def test_factorized_has_unit_marginal_variance():
    d = Factorized(rank=128).draw(KEY, 0, 0, "w", (64, 64), jnp.float32)
    assert abs(float(d.dense().var()) - 1.0) < 0.1


def test_stacked_leaves_get_independent_factors_per_layer():
    d = LowRank(rank=1).draw(KEY, 0, 0, "w", (3, 4, 5), jnp.float32)
    assert d.v.shape == (3, 4, 1)
    assert not np.allclose(d.v[0], d.v[1])


# --- scopes -------------------------------------------------------------------------------


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


# --- scoring ------------------------------------------------------------------------------


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


def _toy_loss(graphdef):
    def loss(state, batch):
        logits = nnx.merge(graphdef, state)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss


@pytest.mark.parametrize("factored", [True, False], ids=["factored", "formed"])
@pytest.mark.parametrize("noise", [LowRank(rank=2), Factorized(rank=8)], ids=["lowrank", "factorized"])
def test_adapter_path_equals_generic_path_on_nnx_model(noise, factored, monkeypatch):
    """Both ways ``nn.dense`` may consume a Perturbed weight give the generic path's losses."""
    monkeypatch.setattr(nn, "factored_is_cheaper", lambda x, w: factored)
    graphdef, state = nnx.split(ToyMLP(4, 16, 3, rngs=nnx.Rngs(1)))
    batch = toy_classification(KEY, n=32)
    loss = _toy_loss(graphdef)
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


def test_frozen_leaves_are_not_perturbed():
    def loss(params, batch):
        return jnp.sum(params["w"]) + 100 * jnp.sum(params["frozen"])

    spec = zojax.ZOSpec(members=3, scope="^w$")
    losses = zojax.score(loss, {"w": jnp.zeros(4), "frozen": jnp.ones(4)}, None, KEY, 0, spec)
    np.testing.assert_allclose(losses.sum(1) / 2, 400.0, rtol=1e-5)  # ±eps cancels; frozen part constant


# --- estimators ---------------------------------------------------------------------------


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


def test_fitness_shaping():
    losses = jnp.array([[1.0, 2.0], [5.0, 0.0]])
    np.testing.assert_allclose(zojax.centered_rank(losses), [[-1 / 6, 1 / 6], [0.5, -0.5]], rtol=1e-6)
    np.testing.assert_allclose(zojax.zscore(losses).std(), 1.0, rtol=1e-5)
    assert zojax.estimators.ESTIMATORS["sign"](losses, 1.0).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="unknown estimator 'nope'"):
        zojax.ZOSpec(estimator="nope")


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


# --- updates ------------------------------------------------------------------------------


def _least_squares():
    kx, kw = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(kx, (64, 8))
    y = x @ jax.random.normal(kw, (8,))

    def loss(params, batch):
        return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)

    return loss, {"w": jnp.zeros(8), "b": jnp.zeros(())}, {"x": x, "y": y}


def _logistic():
    batch = toy_classification(jax.random.PRNGKey(4), n=128, d_in=6, classes=2)

    def loss(params, batch):
        logits = batch["x"] @ params["w"]
        return optax.sigmoid_binary_cross_entropy(logits, batch["y"].astype(jnp.float32)).mean()

    return loss, {"w": jnp.zeros(6)}, batch


@pytest.mark.parametrize("problem", [_least_squares, _logistic], ids=["least_squares", "logistic"])
@pytest.mark.parametrize("which", ["zo_sgd", "adam"])
def test_optimizers_reduce_loss(problem, which):
    loss, params, batch = problem()
    sgd_lr = 0.02 if problem is _least_squares else 1.0
    opt = zojax.zo_sgd(sgd_lr) if which == "zo_sgd" else optax.chain(zojax.densify(), optax.adam(0.05))
    spec = zojax.ZOSpec(eps=1e-3, members=8)
    initial = float(loss(params, batch))
    state, frozen = zojax.init(params, spec, opt, KEY)
    batches = jax.tree.map(lambda x: jnp.broadcast_to(x, (300,) + x.shape), batch)
    state, info = zojax.run_steps(state, frozen, batches, loss_fn=loss, spec=spec, optimizer=opt)
    final = float(loss(zojax.combine(state.params, frozen), batch))
    factor = 50 if problem is _least_squares else 3
    assert final < initial / factor, (initial, final)


def test_run_steps_equals_repeated_step():
    loss, params, batch = _least_squares()
    spec, opt = zojax.ZOSpec(noise=LowRank(rank=1, refresh_every=2), members=2), zojax.zo_sgd(0.01)
    s1, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, KEY)
    for _ in range(5):
        s1, _ = zojax.step(s1, frozen, batch, loss_fn=loss, spec=spec, optimizer=opt)
    s2, _ = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, KEY)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 5), batch)
    s2, info = zojax.run_steps(s2, frozen, stacked, loss_fn=loss, spec=spec, optimizer=opt)
    np.testing.assert_allclose(s1.params["w"], s2.params["w"], rtol=1e-6)
    assert info.losses.shape == (5, 2, 2) and info.step.tolist() == [0, 1, 2, 3, 4]


def test_micro_batches_average_coefficients():
    loss, params, batch = _least_squares()
    spec = zojax.ZOSpec(members=3)
    halves = jax.tree.map(lambda x: x.reshape((2, 32) + x.shape[1:]), batch)
    c = [spec.coefficients(zojax.score(loss, params, jax.tree.map(lambda x, i=i: x[i], halves), KEY, 0, spec))
         for i in range(2)]
    opt = zojax.zo_sgd(0.0)
    state, frozen = zojax.init(params, spec, opt, KEY)
    _, info = zojax.step(state, frozen, halves, loss_fn=loss, spec=spec, optimizer=opt, micro_batches=2)
    # coefficients divide float32 loss differences by 2 eps: compare at that resolution
    np.testing.assert_allclose(info.coeffs, (c[0] + c[1]) / 2, rtol=1e-4, atol=2e-3)


def test_zo_sgd_weight_decay_skips_vectors():
    params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    grad = zojax.ZOGrad(KEY, jnp.int32(0), jnp.zeros(1), Gaussian())
    opt = zojax.zo_sgd(0.1, weight_decay=0.5)
    upd, _ = opt.update(grad, opt.init(params), params)
    np.testing.assert_allclose(upd["w"], -0.05)
    np.testing.assert_allclose(upd["b"], 0.0)


def test_lowrank_update_matches_dense_formula():
    params = {"w": jnp.ones((5, 4))}
    noise = LowRank(rank=2)
    coeffs = jnp.array([0.5, -2.0])
    grad = zojax.ZOGrad(KEY, jnp.int32(3), coeffs, noise)
    expected = sum(c * noise.draw(KEY, 3, k, "w", (5, 4), jnp.float32).dense() for k, c in enumerate(coeffs)) / 2
    np.testing.assert_allclose(zojax.dense_gradient(grad, params)["w"], expected, rtol=1e-5)


def test_lozo_m_keeps_factored_momentum_and_reduces_loss():
    loss, params, batch = _least_squares()
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


# --- step robustness, replay --------------------------------------------------------------


def test_non_finite_loss_skips_step_and_counts_it():
    def loss(params, batch):
        return jnp.sum(params["w"] ** 2) * batch

    params = {"w": jnp.ones(3)}
    spec, opt = zojax.ZOSpec(members=2), zojax.zo_sgd(0.1)
    state, frozen = zojax.init(jax.tree.map(jnp.copy, params), spec, opt, KEY)
    state, info = zojax.step(state, frozen, jnp.float32(jnp.nan), loss_fn=loss, spec=spec, optimizer=opt)
    assert not bool(info.applied) and int(state.skipped) == 1 and int(state.step) == 1
    np.testing.assert_array_equal(state.params["w"], params["w"])
    state, info = zojax.step(state, frozen, jnp.float32(1.0), loss_fn=loss, spec=spec, optimizer=opt)
    assert bool(info.applied) and int(state.skipped) == 1


@pytest.mark.parametrize("noise", [Rademacher(), LowRank(rank=2, refresh_every=3)], ids=lambda n: type(n).__name__)
def test_replay_is_bitwise(noise, tmp_path):
    graphdef, params = nnx.split(ToyMLP(4, 8, 3, rngs=nnx.Rngs(2)))
    loss = _toy_loss(graphdef)
    batch = toy_classification(KEY, n=16)
    spec = zojax.ZOSpec(noise=noise, eps=1e-2, members=3, scope="kernel")
    opt = optax.chain(zojax.densify(), optax.adam(1e-2)) if isinstance(noise, Rademacher) else zojax.zo_sgd(0.05, 0.01)
    base = jax.tree.map(jnp.copy, params)
    state, frozen = zojax.init(params, spec, opt, KEY)
    log = zojax.SeedLog.new(KEY, spec)
    for _ in range(3):
        state, info = zojax.step(state, frozen, batch, loss_fn=loss, spec=spec, optimizer=opt)
        log.record(info.step, info.coeffs, info.applied)
    stacked = jax.tree.map(lambda x: jnp.stack([x] * 4), batch)
    state, info = zojax.run_steps(state, frozen, stacked, loss_fn=loss, spec=spec, optimizer=opt)
    log.record(info.step, info.coeffs, info.applied)
    log.save(tmp_path / "seeds.jsonl")
    loaded = zojax.SeedLog.load(tmp_path / "seeds.jsonl")
    rebuilt = zojax.replay(base, loaded, opt)
    trained = zojax.combine(state.params, frozen)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.tree.leaves(rebuilt)[1], jax.tree.leaves(base)[1])


def test_compare_with_grad_diagnostic():
    params = quad_params()
    report = zojax.compare_with_grad(quadratic, params, QUAD_BATCH, KEY, zojax.ZOSpec(members=16), num_steps=64)
    assert report["cosine_mean"] > 0.9
    assert 0 < report["cosine_single"] < report["cosine_mean"]
    assert report["relative_variance"] > 0


# --- bad input ----------------------------------------------------------------------------


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


def test_bad_rank_names_the_argument():
    with pytest.raises(ValueError, match="rank"):
        LowRank(rank=0)
    with pytest.raises(ValueError, match="refresh_every"):
        LowRank(refresh_every=0)


def test_mismatched_pytrees_are_reported():
    spec = zojax.ZOSpec()
    trainable, frozen = zojax.partition({"a": jnp.ones(2), "b": jnp.ones(2)}, "a")
    with pytest.raises(ValueError, match="do not match"):
        zojax.score(lambda p, b: 0.0, {"a": jnp.ones(2)}, None, KEY, 0, spec, frozen=frozen)


def test_lozo_m_requires_lowrank_noise():
    with pytest.raises(ValueError, match="LowRank"):
        zojax.lozo_m(0.1, noise=Gaussian(), members=1)
