"""optax-style transforms over a :class:`~zojax.optim.gradient.ZOGrad`.

* :func:`zo_sgd` -- MeZO/LoZO's update ``theta <- theta - lr (g + wd theta)``;
* :func:`densify` -- turns a ZOGrad into a dense gradient so any optax chain follows;
* :func:`lozo_m` -- LoZO-M momentum kept in factored ``(d_out x r)`` form;
* :func:`lozo_adapter` -- the seed paper's dynamic adapter state: the low-rank update is
  accumulated while V is fixed and folded into the weights when V is refreshed.

Optimisers work on the *trainable* pytree (``None`` at frozen leaves), so optimiser state is
never allocated for frozen weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from zojax import nn
from zojax.directions import LowRank, Noise
from zojax.directions.base import ELEMENTWISE_MAX_TERMS, NORMAL_MAX
from zojax.directions.lowrank import sum_outer
from zojax.optim.gradient import ZOGrad, dense_gradient
from zojax.paths import map_with_paths
from zojax.precision import add_rounded, rounding_key
from zojax.types import PyTree

if TYPE_CHECKING:
    from zojax.scoring import ZOSpec

__all__ = [
    "zo_sgd", "zo_sgd_update", "densify", "lozo_m", "lozo_adapter", "ZOTransformation", "BoundedTransformation",
    "effective_params", "fold", "apply_update", "update_bound",
    "direction_scale", "weight_decay_mask",
]

def _as_schedule(learning_rate: optax.ScalarOrSchedule, name: str) -> optax.Schedule:
    if callable(learning_rate):
        return learning_rate
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate)):
        raise ValueError(f"{name}: learning_rate must be a finite number or a schedule, got {learning_rate!r}")
    return lambda count: learning_rate


def _decays(decay_mask, noise: Noise, path: str, x) -> bool:
    # MeZO skips weight decay for biases and norm weights: the 1-D leaves, stacks declared by the noise.
    return decay_mask(path, x) if decay_mask is not None else noise.is_matrix(path, x.shape)


def _unzip(pairs: PyTree) -> tuple[PyTree, PyTree]:
    """A pytree of ``(a, b)`` pairs (one per trainable leaf) as two pytrees."""
    is_pair = lambda t: isinstance(t, tuple)  # noqa: E731
    return (
        jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair),
        jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair),
    )


class BoundedTransformation(NamedTuple):
    """An optax ``GradientTransformation`` that also bounds the weights its update leaves, cheaply.

    ``bound(grad, state, params) -> scalar`` is an upper bound on every ``|theta|`` after
    ``update`` (see :func:`update_bound`); the fused step uses it to skip its exact finiteness
    check. The bound is a capability of this transformation alone: wrapping it (``optax.chain``,
    ``optax.masked``, ...) gives a plain ``GradientTransformation`` without one, and the step then
    checks the update exactly -- one more pass, never a wrong answer.
    """

    init: Callable
    update: Callable
    bound: Callable


def weight_decay_mask(noise: Noise):
    """The leaves :func:`zo_sgd` decays (matrices: not biases or norm scales, stacks declared by
    ``noise``), as the ``mask`` of an optax transform (``optax.adamw(..., mask=...)``), so that an
    optax chain (``densify()`` + adamw, or the first-order baseline) decays the same leaves.

    >>> from zojax.directions import Gaussian
    >>> weight_decay_mask(Gaussian())({"w": jnp.ones((2, 2)), "b": jnp.ones(2)})
    {'b': False, 'w': True}
    """
    return lambda params: map_with_paths(lambda path, x: _decays(None, noise, path, x), params)


class ScheduleState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # named as in optax's states; shadows tuple.count


def zo_sgd(learning_rate, weight_decay: float = 0.0, decay_mask=None):
    """MeZO / LoZO update ``theta <- theta - lr (mean_k c_k z_k + wd theta)``.

    Lean: each leaf's update is computed from regenerated directions on its own (low-rank
    directions as one rank-Kr matmul), so no whole-model dense gradient is kept.
    ``learning_rate`` is a float or an optax schedule; ``decay_mask(path, leaf)`` picks
    the leaves that get weight decay (default: matrices, as the noise's ``stacked``
    declaration sees them; see :func:`zojax.paths.is_matrix`).

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
            g = grad.leaf_gradient(path, x)
            if weight_decay and _decays(decay_mask, grad.noise, path, x):
                g = g + weight_decay * x
            return (-lr * g).astype(x.dtype)

        return map_with_paths(one, params), ScheduleState(state.count + 1)

    def bound(grad: ZOGrad, state: ScheduleState, params) -> jax.Array:
        # |theta'| <= max|theta| + |lr| (mean_k |c_k| max|z| + |wd| max|theta|), from scalars and one
        # read-only pass over the weights: no direction is regenerated (see update_bound)
        lr = jnp.abs(jnp.asarray(schedule(state.count), jnp.float32))
        p_max = _max_abs(params)
        return p_max + lr * (_gradient_max(grad) + abs(weight_decay) * p_max)

    return BoundedTransformation(init, update, bound)


def _max_abs(tree) -> jax.Array:
    """``max |x|`` over every leaf of ``tree``, in float32 (0 for no values: size-0 leaves are fine)."""
    maxima = [jnp.max(jnp.abs(x), initial=0).astype(jnp.float32) for x in jax.tree.leaves(tree)]
    return jnp.max(jnp.stack(maxima), initial=0.0) if maxima else jnp.float32(0)


def _gradient_max(grad: ZOGrad) -> jax.Array:
    """A bound on ``|mean_k c_k z_k|``, from the kind's bound on a direction's entries."""
    return jnp.mean(jnp.abs(grad.coeffs.astype(jnp.float32))) * grad.noise.max_abs


def update_bound(optimizer, grad: ZOGrad, opt_state, params) -> jax.Array | None:
    """An upper bound on ``|theta|`` after ``optimizer``'s update, when the optimiser offers a cheap
    one (a :class:`BoundedTransformation`: ``zo_sgd``; a :class:`ZOTransformation` with a bound:
    ``lozo_adapter``), else None.

    The fused step uses it to skip its finiteness check's second update pass: when the bound is
    far below the dtype's largest value, no updated weight can overflow.

    >>> import jax.random as jr; from zojax.directions import Rademacher
    >>> p = {"w": jnp.full(3, 2.0)}
    >>> g = ZOGrad(jr.PRNGKey(0), jnp.int32(0), jnp.array([0.5]), Rademacher())
    >>> round(float(update_bound(zo_sgd(0.1), g, zo_sgd(0.1).init(p), p)), 4)  # 2 + 0.1 * 0.5 * 1
    2.05
    >>> update_bound(densify(), g, None, p) is None
    True
    >>> update_bound(optax.chain(zo_sgd(0.1)), g, optax.chain(zo_sgd(0.1)).init(p), p) is None  # wrapped: dropped
    True
    """
    bound = optimizer.bound if isinstance(optimizer, (BoundedTransformation, ZOTransformation)) else None
    return None if bound is None else bound(grad, opt_state, params)


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


def _factor_state(params, noise: LowRank, members: int, vector_state):
    """Per trainable leaf: zeros of the members' fresh factors ``(K, ..., d_out, r)`` for a matrix,
    ``vector_state(leaf)`` for a vector (LoZO-M's dense momentum, the adapter state's nothing)."""

    def one(path, x):
        if noise.is_matrix(path, x.shape):
            return jnp.zeros((members,) + x.shape[:-2] + (x.shape[-1], noise.rank), x.dtype)
        return vector_state(x)

    return map_with_paths(one, params)


class LozoMState(NamedTuple):
    # applied updates so far (skipped steps never reach the optimiser)
    count: jax.Array  # type: ignore[assignment]  # named as in optax's states; shadows tuple.count
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
        momentum = _factor_state(params, noise, members, jnp.zeros_like)
        return LozoMState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), momentum)

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
                n = accumulate(n, grad.leaf_gradient(path, x))
                return (-lr * n).astype(x.dtype), n
            d = grad.member_directions(path, x)
            old = dataclasses.replace(grad, step=state.last_step).member_directions(path, x)
            refreshed = (grad.step // noise.refresh_every) != (state.last_step // noise.refresh_every)
            reproject = jnp.einsum("k...ir,k...is->k...rs", old.v, d.v) / x.shape[-2]
            n = jnp.where(refreshed, jnp.einsum("k...or,k...rs->k...os", n, reproject), n)
            n = accumulate(n, c.reshape((k,) + (1,) * (n.ndim - 1)).astype(x.dtype) * d.u)
            upd = jnp.einsum("k...ir,k...or->...io", d.v, n) / k
            if weight_decay:
                upd = upd + weight_decay * x
            return (-lr * upd).astype(x.dtype), n

        updates, momentum = _unzip(map_with_paths(one, params, state.momentum))
        return updates, LozoMState(state.count + 1, jnp.asarray(grad.step, jnp.int32), momentum)

    return optax.GradientTransformation(init, update)


class AdapterState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # applied updates so far (shadows tuple.count, as in optax)
    window: jax.Array  # the V window (step // refresh_every) the accumulators are expressed in
    acc: PyTree  # per matrix leaf: (K, ..., d_out, r) factors A_k; the weights stand for W + sum_k V_k A_k^T


class ZOTransformation(NamedTuple):
    """An optax ``GradientTransformation`` that keeps part of its update outside the weights.

    ``fold(params, state, key, step, force=False) -> (params, state)`` moves what is kept
    outside into the weights when ``step`` needs it (or always, with ``force``);
    ``view(params, state, key, adapter) -> params`` is what a step scores: the weights with
    the kept update, as :class:`zojax.nn.Perturbed` leaves on the adapter path.
    :func:`step` and :func:`zojax.replay` call both; :func:`effective_params` folds for export.
    ``scale(state, params) -> pytree`` (optional) multiplies every scored direction coordinate-wise:
    a preconditioner (HiZOO's ``H^-1/2``) or a mask (Sparse MeZO), one array per trainable leaf.
    ``bound(grad, state, params) -> scalar`` (optional) is as :class:`BoundedTransformation`'s, and
    bounds what a fold of the updated state would write too. ``folded_finite(params, state, key, step)
    -> bool`` (optional): whether a forced fold would leave every weight finite, found without forming
    the folded weights (the exact update check; without it the check folds a copy of the weights).
    """

    init: Callable
    update: Callable
    fold: Callable
    view: Callable
    scale: Callable | None = None
    bound: Callable | None = None
    folded_finite: Callable | None = None


def _add_outer(x, v, u, step, key, *, finite_only: bool = False) -> jax.Array:
    """``x + sum_k v_k u_k^T`` in ``x``'s dtype (:func:`~zojax.precision.add_rounded` with ``key``) for factors
    ``(K, ..., d_in, r)`` and ``(K, ..., d_out, r)``; with ``finite_only``, whether all of it is finite.

    Past a few terms the sum is a matmul whose result is a buffer the size of ``x``; for a stack of layers
    it is then formed one layer at a time, in a loop that writes ``x`` in place (a layer's buffer, not a
    stack's: 8 GiB for an OPT-13B MLP stack in bfloat16). A 16-bit layer then rounds with its own key.
    """
    def whole(x, v, u, key):
        y = add_rounded(x, sum_outer(v, u, step), key)
        return jnp.all(jnp.isfinite(y)) if finite_only else y

    if v.shape[0] * v.shape[-1] <= ELEMENTWISE_MAX_TERMS or x.ndim < 3:
        return whole(x, v, u, key)

    def layer(i, x):
        return (jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), jax.lax.dynamic_index_in_dim(v, i, 1, keepdims=False),
                jax.lax.dynamic_index_in_dim(u, i, 1, keepdims=False), jax.random.fold_in(key, i))

    if finite_only:
        return jax.lax.fori_loop(0, x.shape[0], lambda i, ok: ok & whole(*layer(i, x)), jnp.array(True))
    return jax.lax.fori_loop(0, x.shape[0], lambda i, x: jax.lax.dynamic_update_index_in_dim(x, whole(*layer(i, x)), i, 0), x)


def direction_scale(optimizer, opt_state, params: PyTree) -> PyTree | None:
    """The per-coordinate scale ``optimizer`` puts on the scored directions, or None (the directions as drawn)."""
    if isinstance(optimizer, ZOTransformation) and optimizer.scale is not None:
        return optimizer.scale(opt_state, params)
    return None


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
        acc = _factor_state(params, noise, members, lambda x: None)
        return AdapterState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32), acc)

    def window_factors(key, window, path, x):
        # V of every member for the window the accumulators belong to
        v_step = window * noise.refresh_every
        return noise.draw_members(key, v_step, members, path, x.shape, x.dtype).v

    def update(grad: ZOGrad, state: AdapterState, params=None):
        if params is None:
            raise ValueError("lozo_adapter.update needs params")
        lr = schedule(state.count)
        c = grad.coeffs.astype(jnp.float32) / grad.coeffs.shape[0]

        def one(path, x, acc):
            if acc is None:
                return (-lr * grad.leaf_gradient(path, x)).astype(x.dtype), None
            u = grad.member_directions(path, x).u
            return None, acc - (lr * c.reshape((-1,) + (1,) * (acc.ndim - 1))).astype(x.dtype) * u

        updates, acc = _unzip(map_with_paths(one, params, state.acc))
        return updates, AdapterState(state.count + 1, state.window, acc)

    def bound(grad: ZOGrad, state: AdapterState, params) -> jax.Array:
        # What a fold will write: |W + V A'^T| <= max|W| + K r max|v| max|A'| with A' = A - lr c U / K
        # (|u|, |v| <= the normal bound; a factorized scale is below 1); 1-D leaves as zo_sgd's bound.
        lr = jnp.abs(jnp.asarray(schedule(state.count), jnp.float32))
        c_max = jnp.max(jnp.abs(grad.coeffs.astype(jnp.float32)))
        a_max = _max_abs(state.acc) + lr * c_max / members * NORMAL_MAX
        return _max_abs(params) + lr * _gradient_max(grad) + members * noise.rank * NORMAL_MAX * a_max

    def fold(params, state: AdapterState, key, step, force=False):
        window = jnp.asarray(step, jnp.int32) // noise.refresh_every
        due = jnp.logical_or(force, window != state.window)

        def folded(operands):
            params, acc = operands

            def one(path, x, a):
                if a is None:
                    return x
                v = window_factors(key, state.window, path, x)
                return _add_outer(x, v, a, step, rounding_key(key, step, path, write=1))

            return map_with_paths(one, params, acc), jax.tree.map(jnp.zeros_like, acc)

        params, acc = jax.lax.cond(due, folded, lambda operands: operands, (params, state.acc))
        return params, AdapterState(state.count, window, acc)

    def folded_finite(params, state: AdapterState, key, step):
        def one(path, x, a):
            if a is None:
                return jnp.all(jnp.isfinite(x))
            v = window_factors(key, state.window, path, x)
            return _add_outer(x, v, a, step, rounding_key(key, step, path, write=1), finite_only=True)

        return jnp.all(jnp.stack(jax.tree.leaves(map_with_paths(one, params, state.acc))))

    def view(params, state: AdapterState, key, adapter: bool = True):
        def one(path, x, a):
            if a is None:
                return x
            v = window_factors(key, state.window, path, x)
            if not adapter:
                return (x + sum_outer(v, a, state.window)).astype(x.dtype)
            # the K members' factors side by side: one rank-(K r) term
            merge = lambda f: jnp.moveaxis(f, 0, -2).reshape(f.shape[1:-1] + (members * noise.rank,))  # noqa: E731
            return nn.Perturbed(x, merge(v), merge(a))

        return map_with_paths(one, params, state.acc)

    return ZOTransformation(init, update, fold, view, bound=bound, folded_finite=folded_finite)


def fold(optimizer, params: PyTree, opt_state, key, step, *, force: bool = False) -> tuple[PyTree, Any]:
    """``(params, opt_state)`` with what the optimiser keeps outside the weights folded in where
    ``step`` needs it (a new V window of the dynamic adapter state), or always with ``force``.
    Plain optax optimisers keep nothing outside: both come back as they are. A training step
    (:func:`zojax.step`) and a replayed one (:func:`zojax.replay`) fold first, then update."""
    if not isinstance(optimizer, ZOTransformation):
        return params, opt_state
    return optimizer.fold(params, opt_state, key, step, force)


def effective_params(optimizer, params: PyTree, opt_state, key, step) -> PyTree:
    """The trainable weights a run stands for: ``params`` with anything the optimiser keeps
    outside them (the dynamic adapter state) folded in. Plain optax optimisers: ``params``."""
    return fold(optimizer, params, opt_state, key, step, force=True)[0]


def apply_update(optimizer, grad: ZOGrad, params: PyTree, opt_state) -> tuple[PyTree, Any]:
    """``optimizer.update`` then the updates applied; a ``None`` update leaves its leaf as is
    (the adapter state updates its accumulators, not the weights)."""
    updates, opt_state = optimizer.update(grad, opt_state, params)

    def one(path, p, u):
        return p if u is None else add_rounded(p, u, rounding_key(grad.key, grad.step, path))

    return map_with_paths(one, params, updates), opt_state


def zo_sgd_update(lr, spec: ZOSpec, weight_decay: float = 0.0, *, adapter_state: bool = True):
    """``zo_sgd``, kept as the dynamic adapter state (``lozo_adapter``, the same steps) where that
    applies: LoZO directions on the adapter path with a lazy V and no weight decay."""
    noise = spec.noise
    if adapter_state and spec.adapter and not weight_decay and isinstance(noise, LowRank) and noise.refresh_every > 1:
        return lozo_adapter(lr, noise=noise, members=spec.members)
    return zo_sgd(lr, weight_decay)
