"""Small problems shared by the engine and optimiser tests: a quadratic, least squares, logistic
regression, a toy MLP's loss, and one direction kind of each family."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from zojax.directions import Factorized, Gaussian, LowRank, Rademacher
from zojax.toy import toy_classification

NOISES = [Gaussian(), Rademacher(), LowRank(rank=2, refresh_every=3), Factorized(rank=4)]


def quadratic(params, batch):
    return 0.5 * jnp.sum(batch["a"] * params["w"] ** 2) + jnp.sum(params["m"] ** 2) + jnp.sum(params["b"])


def quad_params():
    return {"w": jnp.linspace(-1, 1, 6), "m": jnp.ones((3, 4)) * 0.5, "b": jnp.zeros(2)}


QUAD_BATCH = {"a": jnp.linspace(0.5, 2.0, 6)}


def least_squares():
    kx, kw = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(kx, (64, 8))
    y = x @ jax.random.normal(kw, (8,))

    def loss(params, batch):
        return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)

    return loss, {"w": jnp.zeros(8), "b": jnp.zeros(())}, {"x": x, "y": y}


def logistic():
    batch = toy_classification(jax.random.PRNGKey(4), n=128, d_in=6, classes=2)

    def loss(params, batch):
        logits = batch["x"] @ params["w"]
        return optax.sigmoid_binary_cross_entropy(logits, batch["y"].astype(jnp.float32)).mean()

    return loss, {"w": jnp.zeros(6)}, batch


def toy_loss(graphdef):
    def loss(state, batch):
        logits = nnx.merge(graphdef, state)(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    return loss
