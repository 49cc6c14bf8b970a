"""A tiny Flax NNX MLP written with :mod:`zojax.nn`, for tests, docs and quick demos.

>>> model = ToyMLP(4, 8, 3, rngs=nnx.Rngs(0))
>>> model(jnp.ones((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from zojax import nn

__all__ = ["ToyMLP", "toy_classification"]


class ToyMLP(nnx.Module):
    """Two-layer MLP whose linears go through ``zojax.nn.dense`` (adapter-path ready)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.fc1 = nnx.Dict(kernel=nnx.Param(init(rngs.params(), (d_in, d_hidden))),
                            bias=nnx.Param(jnp.zeros((d_hidden,))))
        self.fc2 = nnx.Dict(kernel=nnx.Param(init(rngs.params(), (d_hidden, d_out))),
                            bias=nnx.Param(jnp.zeros((d_out,))))

    def __call__(self, x):
        h = jax.nn.gelu(nn.dense(x, self.fc1["kernel"].get_value(), self.fc1["bias"].get_value()))
        return nn.dense(h, self.fc2["kernel"].get_value(), self.fc2["bias"].get_value())


def toy_classification(key, n: int = 256, d_in: int = 4, classes: int = 3):
    """A separable synthetic classification set ``{"x": (n, d_in), "y": (n,)}``."""
    kx, kw = jax.random.split(key)
    x = jax.random.normal(kx, (n, d_in))
    y = jnp.argmax(x @ jax.random.normal(kw, (d_in, classes)), axis=-1)
    return {"x": x, "y": y}
