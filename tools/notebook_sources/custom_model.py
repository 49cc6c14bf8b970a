# ---
# jupyter:
#   # Source of notebooks/custom_model.ipynb (jupytext percent format; see tools/README.md). Rebuild it with
#   # jupytext --update --to ipynb -o notebooks/custom_model.ipynb tools/notebook_sources/custom_model.py
#   accelerator: GPU
#   colab:
#     provenance: []
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # ZO-train your own model or any loss function with the zojax engine
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/custom_model.ipynb) (OWNER/REPO: the repository this notebook lives in)
#
# The outputs saved with this notebook come from a CPU run in small mode (`ZOJAX_NOTEBOOK_SMALL=1`: the same
# cells with fewer steps and examples, as the test suite runs it); run it for full-size results.
#
# zojax's engine is not tied to language models. It needs only a pure function
# `loss_fn(params, batch) -> scalar` over a pytree of parameters — a Flax NNX model split into
# `(graphdef, state)`, a Linen/Equinox model, or a dict of arrays. This notebook walks through
#
# 1. one ZO step by hand: **score** the population, **estimate** coefficients, **update** with an optax chain
#    (`optax.chain(zojax.densify(), optax.adam(...))`);
# 2. the fused, jitted `zojax.step` / `zojax.run_steps`;
# 3. a **non-differentiable objective**: training directly on the 0/1 error rate, which `jax.grad` cannot;
# 4. the **adapter path**: layers written with `zojax.nn` score low-rank perturbations without ever forming
#    the perturbed weights;
# 5. **replay**: the whole run rebuilt from its seed log, bit for bit.
#
# Everything runs in well under a minute on a CPU.

# %%
import glob
import importlib.util
import os
import subprocess
import sys

# Install zojax, skipped when it is already importable. ZOJAX_SOURCE says where from (or set the environment
# variable of that name): a pip requirement such as "git+https://github.com/OWNER/REPO", the repository you opened
# this notebook from (on Colab: the OWNER/REPO after colab.research.google.com/github/ in the address bar).
# Left empty, the cell takes a zojax-*.whl uploaded next to the notebook (Colab: the Files pane), else the
# clone the notebook lives in, and otherwise stops and says what to do.
ZOJAX_SOURCE = os.environ.get("ZOJAX_SOURCE", "")


def zojax_source() -> list[str]:
    if ZOJAX_SOURCE:
        return [ZOJAX_SOURCE]
    wheels = sorted(glob.glob("zojax-*.whl") + glob.glob("/content/zojax-*.whl"))
    if wheels:
        return [wheels[-1]]
    if os.path.exists("../pyproject.toml"):  # notebooks/ of a clone
        return ["-e", ".."]
    raise RuntimeError(
        "zojax is not installed and this cell found nowhere to install it from: set ZOJAX_SOURCE above to "
        "'git+https://github.com/OWNER/REPO' (the repository this notebook came from), or upload a zojax wheel "
        "(built with `pip wheel . -w dist --no-deps` in a clone) next to this notebook, and run the cell again"
    )


if importlib.util.find_spec("zojax") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *zojax_source()])

# %%
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

import zojax
from zojax.toy import toy_classification

SMALL = os.environ.get("ZOJAX_NOTEBOOK_SMALL") == "1"  # the test suite's mode: fewer steps
CALLS = 2 if SMALL else 8  # fused calls of STEPS_PER_CALL steps each
STEPS_PER_CALL = 25 if SMALL else 50
print(f"zojax {zojax.__version__} | JAX {jax.__version__} on {jax.default_backend()} | small mode: {SMALL}")

# %% [markdown]
# ## A model and a loss
#
# A plain Flax NNX classifier built from `nnx.Linear`, and a synthetic 3-class problem. zojax sees only the
# parameter state (a pytree) and a loss function that merges it back into the module.


# %%
class Classifier(nnx.Module):
    def __init__(self, d_in: int, d_hidden: int, classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(d_in, d_hidden, rngs=rngs)
        self.out = nnx.Linear(d_hidden, classes, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.gelu(self.hidden(x)))


data = toy_classification(jax.random.PRNGKey(0), n=1024, d_in=8, classes=3)
train_set = jax.tree.map(lambda a: a[:768], data)
test_set = jax.tree.map(lambda a: a[768:], data)

graphdef, params = nnx.split(Classifier(8, 32, 3, rngs=nnx.Rngs(0)))


def loss_fn(params, batch):
    logits = nnx.merge(graphdef, params)(batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


@jax.jit
def accuracy(params, batch):
    return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(batch["x"]), -1) == batch["y"])


def minibatches(seed: int, num: int, size: int = 64):
    """`num` random minibatches stacked on a leading axis (what `run_steps` scans over)."""
    idx = jax.random.randint(jax.random.PRNGKey(seed), (num, size), 0, len(train_set["y"]))
    return jax.tree.map(lambda a: a[idx], train_set)


print(
    f"{sum(x.size for x in jax.tree.leaves(params))} parameters; initial loss {loss_fn(params, train_set):.3f}, "
    f"test accuracy {accuracy(params, test_set):.3f}"
)

# %% [markdown]
# ## 1. One step by hand: score → estimate → update
#
# A `ZOSpec` says how to perturb: the noise kind (`Gaussian` is MeZO's), `eps`, and the number of directions
# `members` (K). `zojax.score` returns the losses at `theta + eps·z_k` and `theta - eps·z_k` for all K members
# — evaluated in **one** vmapped program — as a `(K, 2)` array. The directions are never stored: each is a
# pure function of `(key, step, member, leaf path)` and is regenerated whenever needed. `score` is traceable:
# jit it (the fused `zojax.step` below does).

# %%
spec = zojax.ZOSpec(noise=zojax.Gaussian(), eps=1e-3, members=16)
key = jax.random.PRNGKey(42)

score = jax.jit(lambda params, batch, step: zojax.score(loss_fn, params, batch, key, step, spec))
losses = score(params, train_set, 0)  # (K, 2): L(theta + eps z_k), L(theta - eps z_k)
coeffs = spec.coefficients(losses)  # the estimate: (L+ - L-) / (2 eps), i.e. zojax.two_sided(losses, eps)
print("losses", losses.shape, "-> coefficients", np.round(np.asarray(coeffs[:4]), 3), "...")

# %% [markdown]
# A `ZOGrad` is the gradient estimate `g = mean_k c_k z_k` described by its seeds — `(key, step, coeffs)`, a
# few bytes. Optimisers are optax `GradientTransformation`s over it: `zojax.zo_sgd` applies MeZO's update
# leaf by leaf, and `zojax.densify()` turns it into an ordinary dense gradient so that **any optax chain**
# can follow (Adam, schedules, clipping, weight decay).

# %%
trainable, frozen = zojax.partition(params, spec.scope)  # scope None: every floating leaf is trainable
grad = zojax.ZOGrad(key, jnp.int32(0), coeffs, spec.noise)
optimizer = optax.chain(zojax.densify(), optax.adam(1e-2))
opt_state = optimizer.init(trainable)
updates, opt_state = jax.jit(optimizer.update)(grad, opt_state, trainable)
stepped = zojax.combine(optax.apply_updates(trainable, updates), frozen)
print(f"loss {loss_fn(params, train_set):.4f} -> {loss_fn(stepped, train_set):.4f} after one step")

# How good is one 16-direction estimate? Compare it with backprop's gradient on this small model.
# (zojax.compare_with_grad reports the same statistics averaged over many steps.)
flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])


@jax.jit
def cosine_to_true_gradient(grad, params, batch):
    zo = flat(zojax.dense_gradient(grad, zojax.partition(params)[0]))  # the dense pytree a ZOGrad stands for
    true = flat(jax.grad(loss_fn)(params, batch))
    return jnp.vdot(zo, true) / (jnp.linalg.norm(zo) * jnp.linalg.norm(true))


print(f"cosine(ZO estimate, jax.grad) = {cosine_to_true_gradient(grad, params, train_set):.3f}")

# %% [markdown]
# ## 2. The fused step
#
# `zojax.init` splits the parameters by `spec.scope` and sets up the optimiser; `zojax.step` runs score +
# estimate + update as one jitted program, and `zojax.run_steps` runs many steps in one compiled call
# (`lax.scan` over stacked batches). Both donate the state. We also record a **seed log** as we go
# (used in section 5).

# %%
base_params = jax.tree.map(jnp.copy, params)  # keep the initial weights: the steps donate theirs
state, frozen = zojax.init(params, spec, optimizer, key)
seed_log = zojax.SeedLog.new(key, spec)
history = []
tic = time.time()
for call in range(CALLS):
    state, info = zojax.run_steps(
        state, frozen, minibatches(call, STEPS_PER_CALL), loss_fn=loss_fn, spec=spec, optimizer=optimizer
    )
    seed_log.record(info.step, info.coeffs, info.applied)
    test_acc = accuracy(zojax.combine(state.params, frozen), test_set)
    history.append((int(state.step), float(info.loss.mean()), float(test_acc)))
print(f"{int(state.step)} steps in {time.time() - tic:.1f} s (including compilation)")
for step, loss, acc in history:
    print(f"step {step:4d}: train loss {loss:.3f}, test accuracy {acc:.3f}")
trained_params = zojax.combine(state.params, frozen)

# %% [markdown]
# ## 3. A non-differentiable objective: train on the 0/1 error rate
#
# ZO methods only need loss *values*, so the objective can be anything you can evaluate: an error rate, a
# BLEU score, a reward from a simulator. The error rate is piecewise constant — `jax.grad` is zero almost
# everywhere — so the perturbation must be large enough to flip some predictions (`eps=0.05` here), and
# more directions per step help. `estimator="rank"` (centred-rank fitness shaping, as in evolution
# strategies) makes the step size independent of the loss scale.


# %%
def error_rate(params, batch):
    logits = nnx.merge(graphdef, params)(batch["x"])
    return jnp.mean((jnp.argmax(logits, -1) != batch["y"]).astype(jnp.float32))


fresh = nnx.split(Classifier(8, 32, 3, rngs=nnx.Rngs(1)))[1]
print(
    "jax.grad of the error rate is zero everywhere:",
    not jnp.any(flat(jax.grad(error_rate)(fresh, train_set))),
)

err_spec = zojax.ZOSpec(eps=0.05, members=32, estimator="rank")
err_opt = optax.chain(zojax.densify(), optax.adam(3e-2))
err_state, err_frozen = zojax.init(fresh, err_spec, err_opt, jax.random.PRNGKey(7))
test_error = jax.jit(error_rate)
errors = [float(test_error(zojax.combine(err_state.params, err_frozen), test_set))]
for call in range(CALLS):
    err_state, _ = zojax.run_steps(
        err_state,
        err_frozen,
        minibatches(100 + call, STEPS_PER_CALL, size=128),
        loss_fn=error_rate,
        spec=err_spec,
        optimizer=err_opt,
    )
    errors.append(float(test_error(zojax.combine(err_state.params, err_frozen), test_set)))
print("test error rate after each call:", np.round(errors, 3))

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
a.plot([h[0] for h in history], [h[2] for h in history], "o-")
a.set(xlabel="step", ylabel="test accuracy", title="cross-entropy, densify + adam")
b.plot(np.arange(len(errors)) * STEPS_PER_CALL, errors, "o-", color="C1")
b.set(xlabel="step", ylabel="test error rate", title="trained on the 0/1 error rate itself")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The adapter path: layers written with `zojax.nn`
#
# With low-rank directions (`LowRank`: LoZO, `Factorized`: MeZO-style high rank) a perturbed weight is
# `W + eps·V Uᵀ`. With `ZOSpec(adapter=True)` zojax does not form that matrix: the weight reaches the model as
# a `zojax.nn.Perturbed(base, v, u)` leaf, and `zojax.nn.dense(x, w, b)` computes
# `x @ W + (x @ v) @ uᵀ`. Every population member then shares the same unbatched `W`, and XLA folds the
# population into the batch of the big matmul — what multi-LoRA serving does. zojax's language models
# (`zojax.models`) route every linear layer through `zojax.nn`; in your own model, call `zojax.nn.dense`
# instead of `x @ w` (plain arrays work too, so the model is unchanged outside ZO training). Both paths give
# the same losses for the same directions (up to float rounding); the adapter path just never materialises
# `W + eps·V Uᵀ` per member.


# %%
class AdapterMLP(nnx.Module):
    """The same classifier, with its matmuls through zojax.nn (adapter-path ready)."""

    def __init__(self, d_in: int, d_hidden: int, classes: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.w1 = nnx.Param(init(rngs.params(), (d_in, d_hidden)))
        self.b1 = nnx.Param(jnp.zeros((d_hidden,)))
        self.w2 = nnx.Param(init(rngs.params(), (d_hidden, classes)))
        self.b2 = nnx.Param(jnp.zeros((classes,)))

    def __call__(self, x):
        # a weight may hold a zojax.nn.Perturbed leaf during scoring; zojax.nn.dense handles both
        h = jax.nn.gelu(zojax.nn.dense(x, self.w1.get_value(), self.b1.get_value()))
        return zojax.nn.dense(h, self.w2.get_value(), self.b2.get_value())


adapter_graphdef, adapter_params = nnx.split(AdapterMLP(8, 32, 3, rngs=nnx.Rngs(2)))
seen = set()  # what the first layer receives, recorded while tracing


def adapter_loss(params, batch):
    seen.add(type(params["w1"].get_value()).__name__)
    logits = nnx.merge(adapter_graphdef, params)(batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


# LoZO: rank-2 directions, V refreshed every 10 steps; scope r"w\d" trains the two matrices, biases stay frozen.
lozo = zojax.ZOSpec(
    noise=zojax.LowRank(rank=2, refresh_every=10), eps=1e-2, members=8, scope=r"w\d", adapter=True
)
lozo_opt = zojax.zo_sgd(0.05)
lozo_state, lozo_frozen = zojax.init(adapter_params, lozo, lozo_opt, key)
for call in range(CALLS):
    lozo_state, info = zojax.run_steps(
        lozo_state,
        lozo_frozen,
        minibatches(200 + call, STEPS_PER_CALL),
        loss_fn=adapter_loss,
        spec=lozo,
        optimizer=lozo_opt,
    )
print("the first layer received:", sorted(seen))  # Perturbed while scoring; plain arrays elsewhere
merged = zojax.combine(lozo_state.params, lozo_frozen)
test_acc = jnp.mean(jnp.argmax(nnx.merge(adapter_graphdef, merged)(test_set["x"]), -1) == test_set["y"])
print(
    f"LoZO (rank 2, zo_sgd) after {int(lozo_state.step)} steps: loss {float(info.loss[-1]):.3f}, "
    f"test accuracy {float(test_acc):.3f}"
)

# %% [markdown]
# ## 5. Replay from the seed log
#
# A ZO step is fully described by `(run key, step, coefficients)`, so the seed log recorded in section 2 —
# a JSON header plus one line per step — is the whole run. `zojax.replay` rebuilds the trained weights
# from the initial ones **without evaluating a single loss**, bit for bit. (`zojax replay --run DIR` does
# the same for a `zojax train` run.)

# %%
log_path = Path(tempfile.mkdtemp()) / "seeds.jsonl"
seed_log.save(log_path)
size = log_path.stat().st_size
print(
    f"seed log: {len(seed_log.entries)} steps in {size} bytes, {size / len(seed_log.entries):.0f} bytes per step "
    f"({spec.members} coefficients as JSON) -- whatever the size of the model"
)

rebuilt = zojax.replay(base_params, zojax.SeedLog.load(log_path), optimizer)
pairs = zip(jax.tree.leaves(rebuilt), jax.tree.leaves(trained_params), strict=True)
same = all(np.array_equal(a, b) for a, b in pairs)
print("replayed weights are bitwise equal to the trained ones:", same)
assert same
