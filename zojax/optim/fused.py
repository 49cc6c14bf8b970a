"""The fused step: score, estimate and update in one jitted, donated program.

:func:`make_step` builds it once per run (``loss_fn``, ``spec``, optimiser and mesh closed
over); :func:`step` and :func:`run_steps` are the same program with those as static
arguments, for one-off calls.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import accelerator
from zojax.estimators import second_difference
from zojax.optim.gradient import PyTree, ZOGrad
from zojax.optim.transforms import ZOTransformation, apply_update, direction_scale, fold, update_bound
from zojax.precision import master_copies, use_masters
from zojax.scope import partition
from zojax.scoring import Member, ZOSpec, center_loss, score

__all__ = ["ZOState", "StepInfo", "init", "step", "run_steps", "make_step", "compile_steps"]

class ZOState(NamedTuple):
    """Everything a run carries between steps (frozen weights live outside, never donated)."""

    params: PyTree  # trainable leaves, None at frozen ones
    opt_state: PyTree
    key: jax.Array  # the run key; directions come from (key, step, member, path)
    step: jax.Array
    skipped: jax.Array  # steps skipped because a loss was not finite


class StepInfo(NamedTuple):
    """What a step measured; from :func:`run_steps` every field has a leading step axis.

    ``loss`` is the mean of the perturbed losses ``losses`` (the K members at theta + eps z and
    theta - eps z), i.e. the loss of the batch near the weights *before* the update: an estimate of the
    training loss that costs nothing extra (no evaluation at the updated weights).
    """

    step: jax.Array  # the step these losses and coefficients belong to
    losses: jax.Array  # (K, 2): member k's loss at theta + eps z_k and theta - eps z_k (one-sided: theta)
    coeffs: jax.Array  # (K,): the estimator's coefficients, e.g. (L+ - L-) / (2 eps)
    applied: jax.Array  # bool: False when a non-finite loss made the step a no-op
    curvature: jax.Array | None = None  # (K,) with ZOSpec.center (HiZOO), else None

    @property
    def loss(self):
        """Mean perturbed loss of the step (over members and signs); shape () or (S,) from run_steps."""
        return self.losses.mean(axis=(-1, -2))


def init(params: PyTree, spec: ZOSpec, optimizer: optax.GradientTransformation, key) -> tuple[ZOState, PyTree]:
    """Partition ``params`` by ``spec.scope`` and set up a run: ``(state, frozen)``.

    The state holds the caller's trainable arrays; :func:`step` donates them, so keep a
    copy of ``params`` if you need the originals afterwards. Trainable leaves stored in
    bfloat16 or float16 are kept as float32 master copies
    (:func:`zojax.precision.master_dtype`): an update below a 16-bit weight's spacing would
    otherwise vanish. Where those copies would add more than 10% to the weights' memory
    (``spec.master_weights=None``, :func:`zojax.precision.use_masters`: full-parameter runs)
    the leaves stay 16-bit and each update is rounded stochastically instead. Frozen leaves keep
    their dtype.

    >>> from zojax.optim import zo_sgd
    >>> state, frozen = init({"w": jnp.zeros(2)}, ZOSpec(), zo_sgd(0.1), jax.random.PRNGKey(0))
    >>> int(state.step), frozen
    (0, {'w': None})
    """
    trainable, frozen = partition(params, spec.scope, spec.noise)
    if use_masters(spec.master_weights, trainable, frozen):
        trainable = master_copies(trainable)
    state = ZOState(
        params=trainable,
        opt_state=optimizer.init(trainable),
        key=jnp.copy(key),  # the state is donated; the caller keeps their key
        step=jnp.zeros([], jnp.int32),
        skipped=jnp.zeros([], jnp.int32),
    )
    return state, frozen


def micro_mean(tree, micro_batches, micro_weight=None):
    """The mean of ``tree``'s leaves over their leading micro-batch axis: weighted by
    ``micro_weight(micro_batch)`` (what each micro-batch's loss is a mean over, e.g. its target
    tokens, so that the micro-batches together equal the whole batch), else plain."""
    if micro_weight is None:
        return jax.tree.map(lambda x: x.mean(0), tree)
    w = jax.lax.map(micro_weight, micro_batches).astype(jnp.float32)
    w = w / jnp.maximum(w.sum(), 1e-9)
    return jax.tree.map(lambda x: jnp.tensordot(w, x.astype(jnp.float32), 1).astype(x.dtype), tree)


def _estimate(loss_fn, state: ZOState, frozen, batch, spec: ZOSpec, micro_batches: int, mesh=None, base=None,
              scale=None, micro_weight=None):
    """``(losses, coeffs, curvature)`` of one step; curvature is None unless ``spec.center``."""

    def one(micro):
        losses = score(loss_fn, state.params, micro, state.key, state.step, spec, frozen=frozen, mesh=mesh, base=base,
                       scale=scale)
        if not spec.center:
            return losses, spec.coefficients(losses), None
        # a loss that samples (takes_member) draws the centre's samples as one-sided scoring's centre: member K
        centre_member = Member(state.key, state.step, jnp.asarray(spec.members))
        center = center_loss(loss_fn, state.params if base is None else base, frozen, micro, centre_member)
        return losses, spec.coefficients(losses), second_difference(losses, center, spec.eps)

    if micro_batches == 1:
        return one(batch)
    # same directions for every micro-batch (same key and step); coefficients averaged
    return micro_mean(jax.lax.map(one, batch), batch, micro_weight)  # a None curvature stays None


def _step(state: ZOState, frozen, batch, *, loss_fn, spec: ZOSpec, optimizer, micro_batches: int = 1, mesh=None,
          rules=None, micro_weight=None):
    if mesh is not None:
        from zojax import parallel

        rules = parallel.DEFAULT_RULES if rules is None else rules
        # weights stay where the mesh puts them: replicated over 'pop', sharded over 'model'
        state = parallel.constrain(state, parallel.state_shardings(state, mesh, rules))
        frozen = parallel.constrain(frozen, parallel.param_shardings(frozen, mesh, rules))
    # a new V window folds the kept update into the weights before anything is scored
    params, opt_state = fold(optimizer, state.params, state.opt_state, state.key, state.step)
    state = state._replace(params=params, opt_state=opt_state)
    base = optimizer.view(params, opt_state, state.key, spec.adapter) if isinstance(optimizer, ZOTransformation) else None
    # a preconditioner or mask the optimiser keeps (after the fold: a mask may be refreshed there)
    scale = direction_scale(optimizer, state.opt_state, state.params)
    losses, coeffs, curvature = _estimate(loss_fn, state, frozen, batch, spec, micro_batches, mesh, base, scale,
                                          micro_weight)
    finite_losses = jnp.all(jnp.isfinite(losses)) & (True if curvature is None else jnp.all(jnp.isfinite(curvature)))
    coeffs = jnp.where(finite_losses, coeffs, 0.0)
    if curvature is not None:
        curvature = jnp.where(finite_losses, curvature, 0.0)
    grad = ZOGrad(state.key, state.step, coeffs, spec.noise, curvature)

    def updated(_):
        return apply_update(optimizer, grad, state.params, state.opt_state)

    def kept(_):
        return state.params, state.opt_state

    # Neither a non-finite loss nor an update that overflows reaches the weights: the step is
    # a counted no-op. The update is computed twice -- first reduced to "is every new value
    # finite?" (fused, no buffer), then applied in place -- because choosing between old and
    # new weights afterwards would hold both: a second copy of every trainable weight. An
    # optimiser that bounds its new weights cheaply (zo_sgd) skips the first pass when the
    # bound is safe, which is every ordinary step.
    if spec.check_update:
        finite = jax.lax.cond(finite_losses, lambda _: _update_is_finite(optimizer, grad, state, updated),
                              lambda _: jnp.array(False), None)
    else:
        finite = finite_losses
    params, opt_state = jax.lax.cond(finite, updated, kept, None)
    new_state = ZOState(params, opt_state, state.key, state.step + 1, state.skipped + (~finite).astype(jnp.int32))
    info = StepInfo(state.step, losses, coeffs, finite, curvature)
    if mesh is not None:
        # every device applied the same update from the same keys and K coefficients
        new_state = parallel.constrain(new_state, parallel.state_shardings(new_state, mesh, rules))
        info = parallel.constrain(info, jax.tree.map(lambda _: parallel.replicated(mesh), info))
    return new_state, info


def _update_is_finite(optimizer, grad: ZOGrad, state: ZOState, updated) -> jax.Array:
    """Whether the update leaves every value finite. An optimiser's cheap bound on the new weights
    (:func:`~zojax.optim.transforms.update_bound`), when far below the largest value of every
    trainable dtype, answers without computing the update; otherwise the update is computed."""
    def exact(_):
        params, opt_state = updated(None)
        # what a later fold writes must be finite too (the adapter state's V A^T into float16 weights)
        if isinstance(optimizer, ZOTransformation) and optimizer.folded_finite is not None:
            return optimizer.folded_finite(params, opt_state, state.key, state.step) & all_finite(opt_state)
        return all_finite((fold(optimizer, params, opt_state, state.key, state.step, force=True)[0], opt_state))

    bound = update_bound(optimizer, grad, state.opt_state, state.params)
    if bound is None:
        return exact(None)
    limit = min(float(jnp.finfo(x.dtype).max) for x in jax.tree.leaves(state.params)) / 2
    return jax.lax.cond(jnp.isfinite(bound) & (bound < limit), lambda _: jnp.array(True), exact, None)


def all_finite(tree: PyTree) -> jax.Array:
    """Whether every floating leaf of ``tree`` is free of NaN and inf, as a traced bool."""
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


_STATIC = ("loss_fn", "spec", "optimizer", "micro_batches", "mesh", "rules")


@functools.partial(accelerator.program, static_argnames=_STATIC, donate_argnames=("state",))
def step(state: ZOState, frozen, batch, *, loss_fn, spec: ZOSpec, optimizer, micro_batches: int = 1, mesh=None,
         rules=None):
    """Score + estimate + update, one jitted program; ``state`` is donated.

    With ``micro_batches > 1`` every leaf of ``batch`` has a leading micro-batch axis; all
    micro-batches use the same directions and their coefficients are averaged. If any
    loss is not finite, or the update would leave a parameter or optimiser value that is
    not finite (an overflow, a schedule gone to inf), the parameters and optimiser state
    are left unchanged, ``state.skipped`` is incremented and ``info.applied`` is False.

    With a ``mesh`` (:func:`zojax.parallel.make_mesh`) the population is scored across its
    ``pop`` axis and the weights are sharded over its ``model`` axis; place the inputs
    first with :func:`zojax.parallel.shard_run` and :func:`zojax.parallel.replicate`;
    ``rules`` are the sharding rules (default :data:`zojax.parallel.DEFAULT_RULES`; a model
    family's are :func:`zojax.models.sharding_rules`). The result does not depend on the mesh
    (up to float rounding).

    >>> from zojax.optim import zo_sgd
    >>> loss = lambda p, b: jnp.sum((p["w"] - b) ** 2)
    >>> opt = zo_sgd(0.05)
    >>> spec = ZOSpec(members=4)
    >>> state, frozen = init({"w": jnp.zeros(3)}, spec, opt, jax.random.PRNGKey(0))
    >>> for _ in range(60):
    ...     state, info = step(state, frozen, jnp.ones(3), loss_fn=loss, spec=spec, optimizer=opt)
    >>> bool(info.loss < 0.2)
    True
    """
    return _step(
        state, frozen, batch, loss_fn=loss_fn, spec=spec, optimizer=optimizer, micro_batches=micro_batches, mesh=mesh,
        rules=rules,
    )


@functools.partial(accelerator.program, static_argnames=_STATIC, donate_argnames=("state",))
def run_steps(state: ZOState, frozen, batches, *, loss_fn, spec: ZOSpec, optimizer, micro_batches: int = 1, mesh=None,
              rules=None):
    """S steps in one compiled call: ``lax.scan`` over ``batches`` stacked on a leading axis
    (:func:`stack_batches` stacks a list of batches).

    Returns the final state and the stacked :class:`StepInfo` (losses (S, K, 2), ...).
    """

    def body(s, batch):
        return _step(
            s, frozen, batch, loss_fn=loss_fn, spec=spec, optimizer=optimizer, micro_batches=micro_batches, mesh=mesh,
            rules=rules,
        )

    return jax.lax.scan(body, state, batches)


def stack_batches(batches) -> PyTree:
    """Stack a sequence of batches (pytrees of equal shapes) on a new leading axis, as
    :func:`run_steps` and ``CompiledStep.run_steps`` take them: one step per batch.

    >>> stacked = stack_batches([{"x": jnp.zeros(3)}, {"x": jnp.ones(3)}])
    >>> stacked["x"].shape
    (2, 3)
    """
    batches = list(batches)
    if not batches:
        raise ValueError("stack_batches needs at least one batch")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *batches)


class CompiledStep(NamedTuple):
    """A run's step, built once by :func:`make_step`; both donate ``state``."""

    step: Any  # (state, frozen, batch) -> (state, info)
    run_steps: Any  # (state, frozen, batches stacked on a leading axis) -> (state, stacked infos)


def make_step(loss_fn, spec: ZOSpec, optimizer, *, micro_batches: int = 1, mesh=None, rules=None,
              micro_weight=None) -> CompiledStep:
    """:func:`step` and :func:`run_steps` for one run, with ``loss_fn``, ``spec``, the optimiser
    and the mesh closed over: built once, so nothing needs to be hashable or cached by
    identity (a fresh closure per call to :func:`step` would recompile). ``micro_weight``
    weighs micro-batches (see :func:`micro_mean`; default: equally).

    >>> from zojax.optim import zo_sgd
    >>> spec, opt = ZOSpec(members=2), zo_sgd(0.05)
    >>> compiled = make_step(lambda p, b: jnp.sum((p["w"] - b) ** 2), spec, opt)
    >>> state, frozen = init({"w": jnp.zeros(3)}, spec, opt, jax.random.PRNGKey(0))
    >>> state, infos = compiled.run_steps(state, frozen, jnp.ones((5, 3)))
    >>> infos.losses.shape, int(state.step)
    ((5, 2, 2), 5)
    """
    options = dict(loss_fn=loss_fn, spec=spec, optimizer=optimizer, micro_batches=micro_batches, mesh=mesh, rules=rules,
                   micro_weight=micro_weight)
    return compile_steps(functools.partial(_step, **options))


def compile_steps(one_step) -> CompiledStep:
    """A :class:`CompiledStep` from ``one_step(state, frozen, batch) -> (state, info)``: the step
    and a ``lax.scan`` of it over batches stacked on a leading axis, both jitted, ``state`` donated,
    with zojax's accelerator defaults (:func:`zojax.accelerator.xla_options`)."""

    def many(state, frozen, batches):
        return jax.lax.scan(lambda s, batch: one_step(s, frozen, batch), state, batches)

    return CompiledStep(accelerator.jit(one_step, donate_argnums=0), accelerator.jit(many, donate_argnums=0))
