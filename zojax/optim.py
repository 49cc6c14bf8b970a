"""ZO gradients as a few bytes, optax-style transforms over them, and the fused step.

A :class:`ZOGrad` is ``(key, step, coeffs)`` plus the static noise kind: it stands for
``g = mean_k coeffs[k] * z_k`` without storing any ``z_k``. Transforms follow optax's
``GradientTransformation`` protocol (``init(params)``, ``update(grad, state, params)``)
and regenerate directions leaf by leaf from the key:

* :func:`zo_sgd` -- MeZO/LoZO's update ``theta <- theta - lr (g + wd theta)``;
* :func:`densify` -- turns a ZOGrad into a dense gradient so any optax chain follows;
* :func:`lozo_m` -- LoZO-M momentum kept in factored ``(d_out x r)`` form;
* :func:`lozo_adapter` -- the seed paper's dynamic adapter state: the low-rank update is
  accumulated while V is fixed and folded into the weights when V is refreshed.

Optimisers work on the *trainable* pytree (``None`` at frozen leaves), so optimiser
state is never allocated for frozen weights.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax.noise import (
    LowRank,
    LowRankDirection,
    Noise,
    combine,
    dense_direction,
    directions,
    leaf_direction,
    leaf_key,
    partition,
    path_str,
)
from zojax import nn
from zojax.scoring import ZOSpec, _materialized, perturb, score

__all__ = [
    "ZOGrad",
    "dense_gradient",
    "zo_sgd",
    "densify",
    "lozo_m",
    "lozo_adapter",
    "ZOState",
    "StepInfo",
    "init",
    "step",
    "run_steps",
    "forward_gradient",
    "compare_with_grad",
]

PyTree = Any
Schedule = Callable[[jax.Array], jax.Array]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["key", "step", "coeffs"], meta_fields=["noise"])
@dataclasses.dataclass(frozen=True)
class ZOGrad:
    """The estimate ``g = mean_k coeffs[k] * z_k`` described by its seeds.

    >>> g = ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.ones(2), LowRank(rank=1))
    >>> g.coeffs.shape
    (2,)
    """

    key: jax.Array
    step: jax.Array
    coeffs: jax.Array
    noise: Noise


def _map_trainable(fn, tree, *rest):
    """tree_map over the non-None leaves of ``tree`` with each leaf's path string."""
    return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_str(p), x, *r), tree, *rest)


def _member_directions(grad: ZOGrad, path: str, x):
    """Directions of all K members for one leaf (LowRankDirection with a leading K axis)."""
    k = grad.coeffs.shape[0]
    return jax.vmap(lambda m: leaf_direction(grad.noise, grad.key, grad.step, m, path, x.shape, x.dtype))(
        jnp.arange(k)
    )


# Up to this many rank-1 terms (K members x rank r) a low-rank gradient is summed elementwise.
_ELEMENTWISE_MAX_TERMS = 16


def _sum_outer(v, u, step) -> jax.Array:
    """``sum_k v_k u_k^T`` for factors ``(K, ..., d_in, r)`` and ``(K, ..., d_out, r)``."""
    k, rank = v.shape[0], v.shape[-1]
    if k * rank <= _ELEMENTWISE_MAX_TERMS:
        # A few outer products summed elementwise: XLA fuses them with the caller's
        # ``theta - lr * g`` into one pass over the weight, where a contraction-(K r) dot
        # writes g first and runs memory-bound (5x slower at LoZO's K r = 2 on CPU).
        v, u = _materialized((v, u), step)
        acc = v[0, ..., :, 0, None] * u[0, ..., None, :, 0]
        for m in range(k):
            for j in range(rank):
                if m or j:
                    acc = acc + v[m, ..., :, j, None] * u[m, ..., None, :, j]
        return acc
    # one matmul over the concatenated rank axis
    return jnp.einsum("k...ir,k...or->...io", v, u)


def _leaf_gradient(grad: ZOGrad, path: str, x) -> jax.Array:
    """``mean_k c_k z_k`` for one leaf, never holding K dense directions at once."""
    k = grad.coeffs.shape[0]
    c = grad.coeffs.astype(jnp.float32) / k
    if isinstance(grad.noise, LowRank) and grad.noise.is_matrix(path, x.shape):
        d = _member_directions(grad, path, x)
        cv = d.v * c.astype(x.dtype).reshape((k,) + (1,) * (d.v.ndim - 1))
        return _sum_outer(cv, d.u, grad.step)

    def term(m, key):
        return c[m].astype(x.dtype) * dense_direction(grad.noise, key, x.shape, x.dtype)

    def add(acc, m):
        return acc + term(m, leaf_key(grad.key, grad.step, m, path)), None

    if k <= _ELEMENTWISE_MAX_TERMS:
        # Unrolled, the sum is elementwise end to end: XLA fuses the K draws with the caller's
        # ``theta - lr * g`` into one in-place pass over the weight, so the update holds no
        # gradient-sized buffer (a scan would carry one per leaf: a whole extra model copy).
        # The K leaf keys come from one vmapped derivation (a compact program).
        keys = jax.vmap(lambda m: leaf_key(grad.key, grad.step, m, path))(jnp.arange(k))
        acc = term(0, keys[0])
        for m in range(1, k):
            acc = acc + term(m, keys[m])
        return acc

    acc, _ = jax.lax.scan(add, jnp.zeros_like(x), jnp.arange(k))
    return acc


def dense_gradient(grad: ZOGrad, params: PyTree) -> PyTree:
    """The dense gradient pytree a ZOGrad stands for (``None`` leaves stay ``None``)."""
    return _map_trainable(lambda path, x: _leaf_gradient(grad, path, x), params)


def _as_schedule(learning_rate, name: str) -> Schedule:
    if callable(learning_rate):
        return learning_rate
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate)):
        raise ValueError(f"{name}: learning_rate must be a finite number or a schedule, got {learning_rate!r}")
    return lambda count: learning_rate


def _decays(decay_mask, noise: Noise, path: str, x) -> bool:
    # MeZO skips weight decay for biases and norm weights: the 1-D leaves, stacks declared by the noise.
    return decay_mask(path, x) if decay_mask is not None else noise.is_matrix(path, x.shape)


class ScheduleState(NamedTuple):
    count: jax.Array


def zo_sgd(learning_rate, weight_decay: float = 0.0, decay_mask=None):
    """MeZO / LoZO update ``theta <- theta - lr (mean_k c_k z_k + wd theta)``.

    Lean: each leaf's update is computed from regenerated directions on its own (low-rank
    directions as one rank-Kr matmul), so no whole-model dense gradient is kept.
    ``learning_rate`` is a float or an optax schedule; ``decay_mask(path, leaf)`` picks
    the leaves that get weight decay (default: matrices, as the noise's ``stacked``
    declaration sees them; see :func:`zojax.noise.is_matrix`).

    >>> opt = zo_sgd(0.1)
    >>> p = {"w": jnp.zeros(3)}
    >>> g = ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.zeros(1), LowRank())
    >>> upd, _ = opt.update(g, opt.init(p), p)
    >>> upd["w"].shape
    (3,)
    """
    schedule = _as_schedule(learning_rate, "zo_sgd")

    def init(params):
        del params
        return ScheduleState(jnp.zeros([], jnp.int32))

    def update(grad: ZOGrad, state: ScheduleState, params=None):
        if params is None:
            raise ValueError("zo_sgd.update needs params (directions are regenerated per leaf)")
        lr = schedule(state.count)

        def one(path, x):
            g = _leaf_gradient(grad, path, x)
            if weight_decay and _decays(decay_mask, grad.noise, path, x):
                g = g + weight_decay * x
            return (-lr * g).astype(x.dtype)

        return _map_trainable(one, params), ScheduleState(state.count + 1)

    return optax.GradientTransformation(init, update)


def densify():
    """A transform from ZOGrad to its dense gradient, to chain with any optax transform.

    >>> opt = optax.chain(densify(), optax.adam(1e-3))
    >>> p = {"w": jnp.zeros(2)}
    >>> g = ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.ones(1), LowRank())
    >>> upd, _ = opt.update(g, opt.init(p), p)
    >>> upd["w"].shape
    (2,)
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(grad: ZOGrad, state, params=None):
        if params is None:
            raise ValueError("densify.update needs params (directions are regenerated per leaf)")
        return dense_gradient(grad, params), state

    return optax.GradientTransformation(init, update)


def _require_lowrank(noise, name):
    if not isinstance(noise, LowRank):
        raise ValueError(f"{name} needs LowRank/Factorized noise, got {noise!r}")


class LozoMState(NamedTuple):
    count: jax.Array  # applied updates so far (skipped steps never reach the optimiser)
    last_step: jax.Array  # the step whose V the momentum factors are expressed in
    momentum: PyTree  # per leaf: (K, ..., d_out, r) factor for matrices, dense for vectors


def lozo_m(learning_rate, beta: float = 0.9, weight_decay: float = 0.0, *, noise: LowRank, members: int):
    """LoZO-M, the official recursion, with the momentum kept as a ``(K, ..., d_out, r)`` factor.

    For member k the momentum is ``V_k N_k^T``. The first update starts it at the first
    estimate, ``N_k = c_k U_k``; afterwards ``N_k <- beta N_k + (1 - beta) c_k U_k`` while V
    is fixed, and when V is refreshed ``N`` is first re-projected onto the new V:
    ``N <- N V_old^T V_new / d_in`` (``V^T V ~ d_in I`` for Gaussian V). The update is
    ``W <- W - lr (mean_k V_k N_k^T + wd W)``; weight decay applies to matrices only, as in
    :func:`zo_sgd`. 1-D leaves keep dense momentum with the same recursion.
    """
    _require_lowrank(noise, "lozo_m")
    schedule = _as_schedule(learning_rate, "lozo_m")

    def init(params):
        def one(path, x):
            if noise.is_matrix(path, x.shape):
                return jnp.zeros((members,) + x.shape[:-2] + (x.shape[-1], noise.rank), x.dtype)
            return jnp.zeros_like(x)

        return LozoMState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), _map_trainable(one, params))

    def update(grad: ZOGrad, state: LozoMState, params=None):
        if params is None:
            raise ValueError("lozo_m.update needs params")
        lr = schedule(state.count)
        first = state.count == 0
        c = grad.coeffs.astype(jnp.float32)
        k = c.shape[0]

        def accumulate(n, estimate):
            return jnp.where(first, estimate, beta * n + (1 - beta) * estimate).astype(n.dtype)

        def one(path, x, n):
            if not noise.is_matrix(path, x.shape):
                n = accumulate(n, _leaf_gradient(grad, path, x))
                return (-lr * n).astype(x.dtype), n
            d = _member_directions(grad, path, x)
            old = _member_directions(dataclasses.replace(grad, step=state.last_step), path, x)
            refreshed = (grad.step // noise.refresh_every) != (state.last_step // noise.refresh_every)
            reproject = jnp.einsum("k...ir,k...is->k...rs", old.v, d.v) / x.shape[-2]
            n = jnp.where(refreshed, jnp.einsum("k...or,k...rs->k...os", n, reproject), n)
            n = accumulate(n, c.reshape((k,) + (1,) * (n.ndim - 1)).astype(x.dtype) * d.u)
            upd = jnp.einsum("k...ir,k...or->...io", d.v, n) / k
            if weight_decay:
                upd = upd + weight_decay * x
            return (-lr * upd).astype(x.dtype), n

        updates, momentum = _unzip(_map_trainable(one, params, state.momentum))
        return updates, LozoMState(state.count + 1, jnp.asarray(grad.step, jnp.int32), momentum)

    return optax.GradientTransformation(init, update)


def _unzip(pairs: PyTree) -> tuple[PyTree, PyTree]:
    """A pytree of ``(a, b)`` pairs (one per trainable leaf) as two pytrees."""
    is_pair = lambda t: isinstance(t, tuple)  # noqa: E731
    return (
        jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair),
        jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair),
    )


class AdapterState(NamedTuple):
    count: jax.Array  # applied updates so far
    window: jax.Array  # the V window (step // refresh_every) the accumulators are expressed in
    acc: PyTree  # per matrix leaf: (K, ..., d_out, r) factors A_k; the weights stand for W + sum_k V_k A_k^T


class ZOTransformation(NamedTuple):
    """An optax ``GradientTransformation`` that keeps part of its update outside the weights.

    ``fold(params, state, key, step, force=False) -> (params, state)`` moves what is kept
    outside into the weights when ``step`` needs it (or always, with ``force``);
    ``view(params, state, key, adapter) -> params`` is what a step scores: the weights with
    the kept update, as :class:`zojax.nn.Perturbed` leaves on the adapter path.
    :func:`step` and :func:`zojax.replay` call both; :func:`effective_params` folds for export.
    """

    init: Callable
    update: Callable
    fold: Callable
    view: Callable


def lozo_adapter(learning_rate, *, noise: LowRank, members: int) -> ZOTransformation:
    """The dynamic adapter state (seed paper): LoZO's update kept as ``A`` while V is fixed.

    Within a V window the summed update ``-lr sum_t c_t V U_t^T`` is itself rank r: it is
    ``V A^T`` with ``A <- A - lr c U / K``. Steps score ``Perturbed(Perturbed(W, V, A), v, u,
    ±eps)`` -- W is read by the matmuls as in inference and never written -- and update only
    the small ``A``. When a step starts a new V window, ``V A^T`` is folded into W first (under
    a conditional: steps inside a window write no weight). The result equals :func:`zo_sgd`
    (no weight decay) step by step up to float rounding, skipped steps included. 1-D leaves
    are updated immediately. Members keep their own V, so with K members the scored term
    has rank K r.
    """
    _require_lowrank(noise, "lozo_adapter")
    schedule = _as_schedule(learning_rate, "lozo_adapter")

    def init(params):
        def one(path, x):
            if noise.is_matrix(path, x.shape):
                return jnp.zeros((members,) + x.shape[:-2] + (x.shape[-1], noise.rank), x.dtype)
            return None

        return AdapterState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), _map_trainable(one, params))

    def window_factors(key, window, path, x):
        # V of every member for the window the accumulators belong to
        v_step = window * noise.refresh_every
        return jax.vmap(lambda m: leaf_direction(noise, key, v_step, m, path, x.shape, x.dtype).v)(jnp.arange(members))

    def update(grad: ZOGrad, state: AdapterState, params=None):
        if params is None:
            raise ValueError("lozo_adapter.update needs params")
        lr = schedule(state.count)
        c = grad.coeffs.astype(jnp.float32) / grad.coeffs.shape[0]

        def one(path, x, acc):
            if acc is None:
                return (-lr * _leaf_gradient(grad, path, x)).astype(x.dtype), None
            u = _member_directions(grad, path, x).u
            return None, acc - (lr * c.reshape((-1,) + (1,) * (acc.ndim - 1))).astype(x.dtype) * u

        updates, acc = _unzip(_map_trainable(one, params, state.acc))
        return updates, AdapterState(state.count + 1, state.window, acc)

    def fold(params, state: AdapterState, key, step, force=False):
        window = jnp.asarray(step, jnp.int32) // noise.refresh_every
        due = jnp.logical_or(force, window != state.window)

        def folded(operands):
            params, acc = operands

            def one(path, x, a):
                if a is None:
                    return x
                v = window_factors(key, state.window, path, x)
                return (x + _sum_outer(v, a, step)).astype(x.dtype)

            return _map_trainable(one, params, acc), jax.tree.map(jnp.zeros_like, acc)

        params, acc = jax.lax.cond(due, folded, lambda operands: operands, (params, state.acc))
        return params, AdapterState(state.count, window, acc)

    def view(params, state: AdapterState, key, adapter: bool = True):
        def one(path, x, a):
            if a is None:
                return x
            v = window_factors(key, state.window, path, x)
            if not adapter:
                return (x + _sum_outer(v, a, state.window)).astype(x.dtype)
            # the K members' factors side by side: one rank-(K r) term
            merge = lambda f: jnp.moveaxis(f, 0, -2).reshape(f.shape[1:-1] + (members * noise.rank,))  # noqa: E731
            return nn.Perturbed(x, merge(v), merge(a))

        return _map_trainable(one, params, state.acc)

    return ZOTransformation(init, update, fold, view)


def effective_params(optimizer, params: PyTree, opt_state, key, step) -> PyTree:
    """The trainable weights a run stands for: ``params`` with anything the optimiser keeps
    outside them (the dynamic adapter state) folded in. Plain optax optimisers: ``params``."""
    if not isinstance(optimizer, ZOTransformation):
        return params
    return optimizer.fold(params, opt_state, key, step, force=True)[0]


def apply_update(optimizer, grad: ZOGrad, params: PyTree, opt_state) -> tuple[PyTree, Any]:
    """``optimizer.update`` then the updates applied; a ``None`` update leaves its leaf as is
    (the adapter state updates its accumulators, not the weights)."""
    updates, opt_state = optimizer.update(grad, opt_state, params)
    params = jax.tree.map(
        lambda u, p: p if u is None else (p + u).astype(p.dtype), updates, params, is_leaf=lambda u: u is None
    )
    return params, opt_state


# --- the fused step -----------------------------------------------------------------------


class ZOState(NamedTuple):
    """Everything a run carries between steps (frozen weights live outside, never donated)."""

    params: PyTree  # trainable leaves, None at frozen ones
    opt_state: PyTree
    key: jax.Array  # the run key; directions come from (key, step, member, path)
    step: jax.Array
    skipped: jax.Array  # steps skipped because a loss was not finite


class StepInfo(NamedTuple):
    step: jax.Array  # the step these losses and coefficients belong to
    losses: jax.Array  # (K, 2)
    coeffs: jax.Array  # (K,)
    applied: jax.Array  # bool: False when a non-finite loss made the step a no-op

    @property
    def loss(self):
        return self.losses.mean(axis=(-1, -2))


def init(params: PyTree, spec: ZOSpec, optimizer: optax.GradientTransformation, key) -> tuple[ZOState, PyTree]:
    """Partition ``params`` by ``spec.scope`` and set up a run: ``(state, frozen)``.

    The state holds the caller's trainable arrays; :func:`step` donates them, so keep a
    copy of ``params`` if you need the originals afterwards.

    >>> state, frozen = init({"w": jnp.zeros(2)}, ZOSpec(), zo_sgd(0.1), jax.random.PRNGKey(0))
    >>> int(state.step), frozen
    (0, {'w': None})
    """
    trainable, frozen = partition(params, spec.scope, spec.noise)
    state = ZOState(
        params=trainable,
        opt_state=optimizer.init(trainable),
        key=jnp.copy(key),  # the state is donated; the caller keeps their key
        step=jnp.zeros([], jnp.int32),
        skipped=jnp.zeros([], jnp.int32),
    )
    return state, frozen


def _estimate(loss_fn, state: ZOState, frozen, batch, spec: ZOSpec, micro_batches: int, mesh=None, base=None):
    def one(micro):
        losses = score(loss_fn, state.params, micro, state.key, state.step, spec, frozen=frozen, mesh=mesh, base=base)
        return losses, spec.coefficients(losses)

    if micro_batches == 1:
        return one(batch)
    # same directions for every micro-batch (same key and step); coefficients averaged
    losses, coeffs = jax.lax.map(one, batch)
    return losses.mean(0), coeffs.mean(0)


def _step(state: ZOState, frozen, batch, *, loss_fn, spec: ZOSpec, optimizer, micro_batches: int = 1, mesh=None):
    if mesh is not None:
        from zojax import parallel

        # weights stay where the mesh puts them: replicated over 'pop', sharded over 'model'
        state = parallel.constrain(state, parallel.state_shardings(state, mesh))
        frozen = parallel.constrain(frozen, parallel.param_shardings(frozen, mesh))
    base = None
    if isinstance(optimizer, ZOTransformation):
        # a new V window folds the kept update into the weights before anything is scored
        params, opt_state = optimizer.fold(state.params, state.opt_state, state.key, state.step)
        state = state._replace(params=params, opt_state=opt_state)
        base = optimizer.view(params, opt_state, state.key, spec.adapter)
    losses, coeffs = _estimate(loss_fn, state, frozen, batch, spec, micro_batches, mesh, base)
    finite_losses = jnp.all(jnp.isfinite(losses))
    coeffs = jnp.where(finite_losses, coeffs, 0.0)
    grad = ZOGrad(state.key, state.step, coeffs, spec.noise)

    def updated(_):
        return apply_update(optimizer, grad, state.params, state.opt_state)

    def kept(_):
        return state.params, state.opt_state

    # Neither a non-finite loss nor an update that overflows reaches the weights: the step is
    # a counted no-op. The update is computed twice -- first reduced to "is every new value
    # finite?" (fused, no buffer), then applied in place -- because choosing between old and
    # new weights afterwards would hold both: a second copy of every trainable weight.
    finite = jax.lax.cond(finite_losses, lambda _: _all_finite(updated(None)), lambda _: jnp.array(False), None)
    params, opt_state = jax.lax.cond(finite, updated, kept, None)
    new_state = ZOState(params, opt_state, state.key, state.step + 1, state.skipped + (~finite).astype(jnp.int32))
    info = StepInfo(state.step, losses, coeffs, finite)
    if mesh is not None:
        # every device applied the same update from the same keys and K coefficients
        new_state = parallel.constrain(new_state, parallel.state_shardings(new_state, mesh))
        info = parallel.constrain(info, jax.tree.map(lambda _: parallel.replicated(mesh), info))
    return new_state, info


def _all_finite(tree: PyTree) -> jax.Array:
    checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


_STATIC = ("loss_fn", "spec", "optimizer", "micro_batches", "mesh")


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def step(state: ZOState, frozen, batch, *, loss_fn, spec: ZOSpec, optimizer, micro_batches: int = 1, mesh=None):
    """Score + estimate + update, one jitted program; ``state`` is donated.

    With ``micro_batches > 1`` every leaf of ``batch`` has a leading micro-batch axis; all
    micro-batches use the same directions and their coefficients are averaged. If any
    loss is not finite, or the update would leave a parameter or optimiser value that is
    not finite (an overflow, a schedule gone to inf), the parameters and optimiser state
    are left unchanged, ``state.skipped`` is incremented and ``info.applied`` is False.

    With a ``mesh`` (:func:`zojax.parallel.make_mesh`) the population is scored across its
    ``pop`` axis and the weights are sharded over its ``model`` axis; place the inputs
    first with :func:`zojax.parallel.shard_run` and :func:`zojax.parallel.replicate`.
    The result does not depend on the mesh (up to float rounding).

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
        state, frozen, batch, loss_fn=loss_fn, spec=spec, optimizer=optimizer, micro_batches=micro_batches, mesh=mesh
    )


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=("state",))
def run_steps(state: ZOState, frozen, batches, *, loss_fn, spec: ZOSpec, optimizer, micro_batches: int = 1, mesh=None):
    """S steps in one compiled call: ``lax.scan`` over ``batches`` stacked on a leading axis.

    Returns the final state and the stacked :class:`StepInfo` (losses (S, K, 2), ...).
    """

    def body(s, batch):
        return _step(
            s, frozen, batch, loss_fn=loss_fn, spec=spec, optimizer=optimizer, micro_batches=micro_batches, mesh=mesh
        )

    return jax.lax.scan(body, state, batches)


# --- baselines and diagnostics ---------------------------------------------------------


def forward_gradient(loss_fn, params: PyTree, batch, key, step, spec: ZOSpec, *, frozen=None) -> ZOGrad:
    """Exact directional derivatives ``<grad L, z_k>`` via ``jax.jvp`` along the same directions.

    The forward-gradient baseline: same directions and update path as the ZO estimate,
    with the finite difference replaced by forward-mode AD.
    """
    if frozen is None:
        params, frozen = partition(params, spec.scope, spec.noise)

    def member(m):
        dirs = directions(params, spec.noise, key, step, m)
        tangent = perturb(jax.tree.map(jnp.zeros_like, params), dirs, 1.0)
        f = lambda p: loss_fn(combine(p, frozen), batch)  # noqa: E731
        return jax.jvp(f, (params,), (tangent,))[1]

    coeffs = jax.lax.map(member, jnp.arange(spec.members))
    return ZOGrad(key, jnp.asarray(step, jnp.int32), coeffs.astype(jnp.float32), spec.noise)


def compare_with_grad(loss_fn, params: PyTree, batch, key, spec: ZOSpec, *, num_steps: int = 32) -> dict:
    """How a ZO estimate relates to ``jax.grad`` on a small model.

    Averages the ZO gradient over ``num_steps`` independent draws (steps 0..n-1) and
    reports the cosine similarity of one draw and of the mean with the true gradient,
    and the per-coordinate variance of a single draw relative to ``|grad|^2``.
    """
    trainable, frozen = partition(params, spec.scope, spec.noise)
    true = jax.grad(lambda p: loss_fn(combine(p, frozen), batch))(trainable)
    flat_true = jnp.concatenate([x.ravel() for x in jax.tree.leaves(true)])

    def draw(t):
        losses = score(loss_fn, trainable, batch, key, t, spec, frozen=frozen)
        g = dense_gradient(ZOGrad(key, t, spec.coefficients(losses), spec.noise), trainable)
        return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])

    draws = jax.lax.map(draw, jnp.arange(num_steps))

    def cos(a, b):
        return jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)

    return {
        "cosine_single": float(jnp.mean(jax.vmap(lambda d: cos(d, flat_true))(draws))),
        "cosine_mean": float(cos(draws.mean(0), flat_true)),
        "relative_variance": float(jnp.sum(draws.var(0)) / (jnp.sum(flat_true**2) + 1e-30)),
    }
