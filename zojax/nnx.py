"""Flax NNX models in, Flax NNX models out: ZO fine-tuning of an ``nnx.Module`` in three calls.

zojax's engine works on pure functions of a parameter pytree. For an NNX model:

1. :func:`init` splits the model's ``nnx.Param`` variables into the ZO state (the trainable leaves that
   ``spec.scope`` selects) and the frozen weights;
2. :func:`loss_fn` turns ``fn(model, batch) -> scalar`` into the ``loss_fn(params, batch)`` that
   :func:`zojax.step`, :func:`zojax.run_steps` and :func:`zojax.make_step` score;
3. :func:`update` writes the trained weights back into the model.

**Donation.** A step donates its state: the trainable arrays the model shares with ``state.params``
are deleted by the first step, and calling the model raises ``Array has been deleted`` until
:func:`update` writes the trained weights back (frozen weights are never donated). Call ``update`` before
using the model between steps, and after the last one. To keep the original weights, copy them before
:func:`init` (``nnx.clone(model)``).

Variables that are not ``nnx.Param`` (batch statistics, RNG state) are read, never trained: the loss
sees them as they were when :func:`loss_fn` was called.

>>> import jax, jax.numpy as jnp, optax, zojax
>>> from flax import nnx
>>> model = nnx.Linear(4, 1, rngs=nnx.Rngs(0))
>>> batch = {"x": jnp.eye(4), "y": jnp.arange(4.0)[:, None]}
>>> spec, opt = zojax.ZOSpec(members=8), zojax.zo_sgd(0.05)
>>> mse = zojax.nnx.loss_fn(model, lambda m, b: jnp.mean((m(b["x"]) - b["y"]) ** 2))
>>> before = float(mse(nnx.state(model, nnx.Param), batch))
>>> state, frozen = zojax.nnx.init(model, spec, opt, jax.random.PRNGKey(0))
>>> state, infos = zojax.run_steps(state, frozen, zojax.stack_batches([batch] * 50), loss_fn=mse, spec=spec,
...                                optimizer=opt)
>>> model = zojax.nnx.update(model, state, frozen)  # the model's own arrays were donated: write back
>>> bool(float(jnp.mean((model(batch["x"]) - batch["y"]) ** 2)) < before)
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import optax
from flax import nnx

from zojax.optim.fused import ZOState
from zojax.optim.fused import init as _init
from zojax.scope import combine
from zojax.scoring import ZOSpec

__all__ = ["init", "loss_fn", "update"]

M = TypeVar("M", bound=nnx.Module)


def init(model: nnx.Module, spec: ZOSpec, optimizer: optax.GradientTransformation, key) -> tuple[ZOState, Any]:
    """``(state, frozen)`` of :func:`zojax.init` over the model's ``nnx.Param`` variables.

    ``spec.scope`` matches the parameter paths as ``nnx.state`` names them (``hidden/kernel``,
    ``layers/0/attn/q/kernel``). ``state.params`` shares the model's trainable arrays, which the first step
    donates (see the module docstring): write them back with :func:`update`.
    """
    return _init(nnx.state(model, nnx.Param), spec, optimizer, key)


def loss_fn(model: nnx.Module, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``fn(model, batch) -> scalar`` as the pure ``loss(params, batch)`` zojax scores.

    Build it once per run and pass the same function to every step (a new function recompiles).
    """
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # two filters: three parts

    def loss(params, batch):
        return fn(nnx.merge(graphdef, params, rest), batch)

    return loss


def update(model: M, state: ZOState, frozen) -> M:
    """Write the trained weights of ``state`` (with the ``frozen`` ones) back into ``model``; returns it."""
    nnx.update(model, combine(state.params, frozen))
    return model
