"""The first-order baseline: the same scopes, data and run state as a ZO run, trained with ``jax.grad``.

It is what a ZO run is compared against (``zo.method: fo`` in the trainer). A step takes the
exact gradient of the loss with respect to the trainable leaves (the scope's partition, frozen
leaves never differentiated) and applies any optax optimiser to it. The state is a
:class:`zojax.optim.ZOState` and the per-step report a :class:`zojax.optim.StepInfo`, so the
trainer's checkpoints, resume, metrics and non-finite-step handling are shared unchanged:

* ``losses`` is ``(1, 2)``: the batch loss twice (there is no ``±eps`` pair), so the mean is the loss;
* ``coeffs`` is ``(1,)``: the gradient's global norm (a diagnostic; there is nothing to replay:
  a first-order run has no seed log, its checkpoints are the record);
* a step whose loss or gradient is not finite changes nothing and is counted in ``skipped``.

Cost: one forward and one backward pass (about three forwards) per step, and the activations
of the whole batch kept for the backward pass -- more memory than ZO's inference-only steps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from zojax.optim import StepInfo, ZOState
from zojax.optim.fused import CompiledStep, compile_steps, micro_mean
from zojax.scope import combine

__all__ = ["fo_step", "make_fo_step"]


def _loss_and_grad(loss_fn, params, frozen, batch, micro_batches: int, micro_weight=None):
    """Batch loss and gradient over the trainable leaves; micro-batches are averaged (accumulation),
    weighted by ``micro_weight`` as in a ZO step (:func:`zojax.optim.fused.micro_mean`)."""

    def one(micro):
        return jax.value_and_grad(lambda p: loss_fn(combine(p, frozen), micro))(params)

    if micro_batches == 1:
        return one(batch)
    # lax.map: one micro-batch's activations live at a time, which is the point of splitting
    return micro_mean(jax.lax.map(one, batch), batch, micro_weight)


def _fo_step(state: ZOState, frozen, batch, *, loss_fn, optimizer, micro_batches: int = 1, micro_weight=None):
    loss, grads = _loss_and_grad(loss_fn, state.params, frozen, batch, micro_batches, micro_weight)
    norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(norm)

    def apply(_):
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    def skip(_):
        return state.params, state.opt_state

    # as in a ZO step: a non-finite loss or gradient never reaches the weights
    params, opt_state = jax.lax.cond(finite, apply, skip, None)
    skipped = state.skipped + (~finite).astype(jnp.int32)
    new_state = ZOState(params, opt_state, state.key, state.step + 1, skipped)
    info = StepInfo(state.step, jnp.full((1, 2), loss, jnp.float32), norm.astype(jnp.float32)[None], finite)
    return new_state, info


def _no_mesh(mesh):
    if mesh is not None:
        raise NotImplementedError("zo.method=fo runs on one device: set mesh.pop=1 and mesh.model=1")


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "micro_batches"), donate_argnames=("state",))
def fo_step(state: ZOState, frozen, batch, *, loss_fn, optimizer, micro_batches: int = 1):
    """One first-order step (gradient + optax update), jitted; ``state`` is donated. For a run,
    :func:`make_fo_step` builds it once.

    >>> import optax; from zojax.optim import init; from zojax.scoring import ZOSpec
    >>> loss = lambda p, b: jnp.sum((p["w"] - b) ** 2)
    >>> opt = optax.sgd(0.1)
    >>> state, frozen = init({"w": jnp.zeros(3)}, ZOSpec(), opt, jax.random.PRNGKey(0))
    >>> for _ in range(30):
    ...     state, info = fo_step(state, frozen, jnp.ones(3), loss_fn=loss, optimizer=opt)
    >>> bool(info.loss < 1e-3)
    True
    """
    return _fo_step(state, frozen, batch, loss_fn=loss_fn, optimizer=optimizer, micro_batches=micro_batches)


def make_fo_step(loss_fn, optimizer, *, micro_batches: int = 1, mesh=None, micro_weight=None) -> CompiledStep:
    """The first-order counterpart of :func:`zojax.optim.make_step`: one step and S steps in one
    compiled call (``lax.scan`` over batches stacked on a leading axis), ``state`` donated."""
    _no_mesh(mesh)
    return compile_steps(functools.partial(
        _fo_step, loss_fn=loss_fn, optimizer=optimizer, micro_batches=micro_batches, micro_weight=micro_weight
    ))
