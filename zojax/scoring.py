"""Population scoring: the losses of K perturbed parameter states in one XLA program.

Two representations of a perturbed leaf share one code path:

* generic: the perturbed value ``theta + s * eps * z`` is formed inside the program
  (works with any ``loss_fn``);
* adapter (``ZOSpec(adapter=True)``): a low-rank direction is passed as a
  :class:`zojax.nn.Perturbed` leaf whose base is the shared, unbatched weight; models that
  call :mod:`zojax.nn` compute ``x @ W + (x @ v) @ u.T`` and, under ``vmap``, XLA folds the
  population into the batch of the big matmul.

The population is ``vmap``-ped over members, in chunks of ``chunk_size`` members
(``lax.map(..., batch_size=...)``), and over the signs inside a member, so a member's
directions are drawn once for both signs and a dense step holds about ``chunk_size``
extra copies of the trainable leaves (two per member: one per sign) rather than K.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from zojax import nn
from zojax.accelerator import fusion_barrier
from zojax.directions import DirectionKind, Gaussian, Noise, draw_directions, is_factored
from zojax.estimators import check_sided, get_estimator
from zojax.paths import leaf_key, path_str
from zojax.scope import combine, partition
from zojax.types import PyTree

__all__ = ["ZOSpec", "Member", "score", "center_loss", "perturb", "scale_directions", "takes_member"]


class Member(NamedTuple):
    """Which population member a loss is computed for: the run key, the step and the member's index
    ``number`` (``members`` for the unperturbed centre of one-sided scoring). A loss that samples (generation) derives
    its keys from these, so every member draws its own samples and a run replays from its seed log."""

    key: jax.Array
    step: jax.Array
    number: jax.Array


def takes_member(loss_fn) -> bool:
    """Whether ``loss_fn`` is called as ``loss_fn(params, batch, member)`` (it sets ``takes_member = True``)."""
    return bool(getattr(loss_fn, "takes_member", False))


@dataclasses.dataclass(frozen=True)
class ZOSpec:
    """Static description of how a step perturbs and scores parameters.

    Args:
      noise: a direction kind (:mod:`zojax.directions`): :class:`~zojax.directions.Gaussian` (MeZO),
        :class:`~zojax.directions.Rademacher`, :class:`~zojax.directions.LowRank` (LoZO),
        :class:`~zojax.directions.Factorized`, ...
      eps: perturbation scale, > 0.
      members: K, the number of directions per step, >= 1.
      scope: which leaves are trainable (see :func:`zojax.scope.trainable_mask`).
      sided: ``"two"`` scores ``theta ± eps z_k``; ``"one"`` scores ``theta + eps z_k`` and
        ``theta`` once (losses column 0 is always ``theta + eps z_k``).
      estimator: name in :data:`zojax.estimators.ESTIMATORS` or a callable
        ``(losses[K, 2], eps) -> coeffs[K]``; ``None`` picks two/one-sided from ``sided``.
        ``two_sided`` needs ``sided="two"`` and ``one_sided`` ``sided="one"``; ``sign``,
        ``zscore`` and ``rank`` fit both.
      chunk_size: members scored at once (memory bound). ``None`` scores all K together.
        It need not divide K: ``lax.map`` scores the remainder as a last, smaller chunk.
      adapter: pass low-rank directions as :class:`zojax.nn.Perturbed` leaves (the model
        must use :mod:`zojax.nn`); dense directions are materialised unless ``lazy_dense``.
      lazy_dense: pass dense directions as :class:`zojax.nn.Noisy` leaves, drawn where the
        model uses the weight (the model must read every trainable leaf through
        :mod:`zojax.nn`: ``dense``/``embed``/``attend``/``materialize``). Under a layer scan a
        dense step then holds one layer's perturbed weights at a time instead of perturbed
        copies of the whole model: full-parameter MeZO at about inference memory.
      center: also score ``theta`` itself once per step (two-sided only): the curvature along
        each direction, ``(L+ + L- - 2 L(theta)) / (2 eps^2)``, reaches the optimiser as
        ``ZOGrad.curvature`` (HiZOO's diagonal Hessian). One forward more per step.
      check_update: also skip a step whose update would leave a non-finite parameter or
        optimiser value (an overflow, a schedule gone to inf). Exact and memory-free, it costs
        one more pass of the update (a second draw of dense directions); ``False`` checks the
        losses only.
      master_weights: trainable leaves stored in bfloat16/float16 are trained through float32
        master copies (``True``) or kept in 16 bits with every update rounded stochastically
        (``False``: no extra memory, unbiased); ``None`` keeps masters unless they would add more
        than 10% to the weights' memory (:func:`zojax.precision.use_masters`).

    >>> ZOSpec(eps=0.0)
    Traceback (most recent call last):
    ...
    ValueError: ZOSpec: eps must be a finite number > 0, got 0.0
    """

    noise: Noise = Gaussian()
    eps: float = 1e-3
    members: int = 1
    scope: Any = None
    sided: str = "two"
    estimator: Any = None
    chunk_size: int | None = None
    adapter: bool = False
    lazy_dense: bool = False
    check_update: bool = True
    center: bool = False
    master_weights: bool | None = None

    def __post_init__(self):
        if not isinstance(self.noise, DirectionKind):
            raise TypeError(f"ZOSpec: noise must be a zojax.directions kind, got {self.noise!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"ZOSpec: eps must be a finite number > 0, got {self.eps!r}")
        if not isinstance(self.members, int) or self.members < 1:
            raise ValueError(f"ZOSpec: members (K) must be an integer >= 1, got {self.members!r}")
        if self.sided not in ("two", "one"):
            raise ValueError(f"ZOSpec: sided must be 'two' or 'one', got {self.sided!r}")
        if self.chunk_size is not None and (
            not isinstance(self.chunk_size, int) or not self.chunk_size >= 1
        ):
            raise ValueError(f"ZOSpec: chunk_size must be None or an integer >= 1, got {self.chunk_size!r}")
        if self.center and self.sided != "two":
            raise ValueError("ZOSpec: center=True (curvature from L+, L- and L(theta)) needs sided='two'")
        get_estimator(self.coefficient_fn_name)
        check_sided(self.coefficient_fn_name, self.sided)

    @property
    def coefficient_fn_name(self):
        if self.estimator is not None:
            return self.estimator
        return "two_sided" if self.sided == "two" else "one_sided"

    def coefficients(self, losses: jax.Array) -> jax.Array:
        """Per-member coefficients from losses of shape (K, 2)."""
        return get_estimator(self.coefficient_fn_name)(losses, self.eps)


def perturb(trainable: PyTree, dirs: PyTree, scale, noise: Noise, adapter: bool = False) -> PyTree:
    """``theta + scale * z`` leaf by leaf, as the direction kind ``noise`` perturbs a weight
    (:meth:`zojax.directions.DirectionKind.perturb`: low-rank directions become ``Perturbed``
    if ``adapter``).

    A leaf of ``trainable`` may be a :class:`zojax.nn.Perturbed` already (weights carrying
    an accumulated low-rank update); on the adapter path the direction nests around it.
    """

    def one(d, x):
        return noise.perturb(x, d, scale, adapter=adapter)

    # directions lead: a Perturbed leaf of ``trainable`` is one subtree at a direction's place
    return jax.tree.map(one, dirs, trainable, is_leaf=is_factored)


def _perturb_lazy(trainable, dirs, scale, spec, key, step, member):
    """:func:`perturb` with every dense direction left to the model (a :class:`zojax.nn.Noisy`)."""

    def one(path, d, x):
        # a dense draw ``d`` is unused (dead code, removed by XLA): the model draws it from the leaf key
        return spec.noise.perturb(x, d, scale, adapter=spec.adapter, key=leaf_key(key, step, member, path_str(path)))

    return jax.tree_util.tree_map_with_path(one, dirs, trainable, is_leaf=is_factored)


def _materialize_factors(dirs, step):
    """Drawn factors as buffers (see :func:`zojax.accelerator.fusion_barrier`); undrawn ones fence themselves."""
    drawn = lambda d: is_factored(d) and not isinstance(d.v, nn.Drawn)  # noqa: E731
    factors = [d for d in jax.tree.leaves(dirs, is_leaf=is_factored) if drawn(d)]
    if not factors:
        return dirs
    done = iter(fusion_barrier(factors, step))
    return jax.tree.map(lambda d: next(done) if drawn(d) else d, dirs, is_leaf=is_factored)


def scale_directions(dirs: PyTree, scale: PyTree | None) -> PyTree:
    """``s * z`` leaf by leaf: a per-coordinate direction scale (HiZOO's ``H^-1/2``, Sparse MeZO's
    mask), ``None`` at a leaf (or as a whole) leaves its direction as drawn. Dense directions only: a
    per-coordinate scale does not keep a low-rank direction low-rank."""
    if scale is None:
        return dirs

    def one(d, s):
        if s is None:
            return d
        if is_factored(d):
            raise ValueError("a per-coordinate direction scale needs dense directions (Gaussian or Rademacher noise)")
        return (d * s).astype(d.dtype)

    return jax.tree.map(one, dirs, scale, is_leaf=lambda d: d is None or is_factored(d))


def score(
    loss_fn: Callable[..., jax.Array],
    params: PyTree,
    batch: Any,
    key: jax.Array,
    step,
    spec: ZOSpec,
    *,
    frozen: PyTree | None = None,
    mesh=None,
    base: PyTree | None = None,
    scale: PyTree | None = None,
) -> jax.Array:
    """Losses at ``theta ± eps z_k`` for the K members of ``spec``, shape ``(K, 2)``.

    ``params`` is the whole pytree (split with ``spec.scope``), or the trainable part
    (``None`` at frozen leaves) when ``frozen`` is given. Traceable: call it inside
    ``jax.jit`` (``zojax.step`` does).

    With a ``mesh`` (:func:`zojax.parallel.make_mesh`) the members are split over its
    ``pop`` axis with ``jax.shard_map``: each device scores K/pop members, both signs (in
    chunks of ``chunk_size``) against the weights it already holds -- replicated over
    ``pop``, possibly sharded over ``model`` -- and the losses, replicated on return, are
    the only values that cross ``pop``.

    ``base`` (default: the trainable leaves) is what the perturbations are added to, leaf
    for leaf: the dynamic adapter state passes its weights as
    :class:`zojax.nn.Perturbed` ``W + V A^T`` there, while ``params`` keeps the plain
    ``W`` that directions are drawn for.

    ``scale`` (default: none) multiplies every direction coordinate-wise before it is added
    (:func:`scale_directions`): an optimiser's preconditioner or mask, one array per trainable
    leaf (``None`` where a leaf is not scaled).

    >>> loss = lambda p, b: jnp.sum((p["w"] - b) ** 2)
    >>> losses = score(loss, {"w": jnp.zeros(3)}, jnp.ones(3), jax.random.PRNGKey(0), 0,
    ...                ZOSpec(members=4))
    >>> losses.shape
    (4, 2)
    """
    if frozen is None:
        trainable, frozen = partition(params, spec.scope, spec.noise)
    else:
        trainable = params
    _check_same_structure(trainable, frozen)
    if base is None:
        base = trainable
    eps = jnp.asarray(spec.eps, jnp.float32)

    signs = jnp.array([1.0, -1.0]) if spec.sided == "two" else jnp.ones((1,))

    if scale is not None and spec.lazy_dense:
        raise ValueError("a direction scale (HiZOO, Sparse MeZO) needs lazy_dense=False: the model draws lazy directions itself")

    def score_members(members, trainable, base, frozen, batch, key, step, scale):
        def evaluate(member):
            # A member's directions are drawn once and shared by its signs (vmapped inside),
            # so a dense direction is generated once per member, not once per (member, sign).
            # On the adapter path the model draws low-rank factors where it uses them, one layer at a
            # time: a generating loss reads every layer's factors once per decode step, and would
            # otherwise hold all members' directions for the whole decode loop.
            dirs = _materialize_factors(draw_directions(trainable, spec.noise, key, step, member, lazy=spec.adapter), step)
            dirs = scale_directions(dirs, scale)

            def one_sign(sign, number):
                if spec.lazy_dense:
                    perturbed = _perturb_lazy(base, dirs, sign * eps, spec, key, step, member)
                else:
                    perturbed = perturb(base, dirs, sign * eps, spec.noise, spec.adapter)
                member_id = Member(key, jnp.asarray(step), number)
                return _scalar_loss(_call(loss_fn, combine(perturbed, frozen), batch, member_id))

            # The signs of a member share its sampling keys (common random numbers for the pair). The number is
            # passed per sign all the same, so that a sampler draws its noise for each sign inside the consumer,
            # as batched generation does per row, rather than once per member into a buffer both signs read
            # (a vocabulary-wide one per sequence and decode step).
            return jax.vmap(one_sign)(signs, jnp.full(signs.shape, member))

        if spec.chunk_size is None or spec.chunk_size >= members.shape[0]:
            return jax.vmap(evaluate)(members)
        return jax.lax.map(evaluate, members, batch_size=spec.chunk_size)

    members = jnp.arange(spec.members)
    from zojax import parallel

    if mesh is None or parallel.pop_size(mesh) == 1:
        losses = score_members(members, trainable, base, frozen, batch, key, step, scale)
    else:
        parallel.check_population(mesh, spec.members)
        losses = parallel.over_population(score_members, mesh, members, trainable, base, frozen, batch, key,
                                          jnp.asarray(step), scale)
    if spec.sided == "two":
        return losses
    unperturbed = center_loss(loss_fn, base, frozen, batch, Member(key, jnp.asarray(step), jnp.asarray(spec.members)))
    return jnp.concatenate([losses, jnp.broadcast_to(unperturbed, losses.shape)], axis=1)


def center_loss(loss_fn, base: PyTree, frozen: PyTree, batch, member: Member | None = None) -> jax.Array:
    """The loss at the unperturbed weights (one-sided scoring's reference, HiZOO's ``L(theta)``):
    ``base`` is the trainable part (``None`` at frozen leaves), as :func:`score` takes it. A loss that
    takes a member (:func:`takes_member`) needs ``member``."""
    return _scalar_loss(_call(loss_fn, combine(base, frozen), batch, member))


def _call(loss_fn, params, batch, member: Member | None):
    if not takes_member(loss_fn):
        return loss_fn(params, batch)
    if member is None:
        raise ValueError("this loss samples per member (takes_member): call it with a Member")
    return loss_fn(params, batch, member)


def _scalar_loss(loss) -> jax.Array:
    # A vector loss would silently train with per-element coefficients.
    if jnp.shape(loss) != ():
        raise ValueError(
            f"loss_fn must return a scalar loss per member; it returned shape {jnp.shape(loss)} "
            "(reduce it, e.g. with .mean())"
        )
    return jnp.asarray(loss).astype(jnp.float32)


def _check_same_structure(trainable, frozen):
    is_none = lambda x: x is None  # noqa: E731
    a = jax.tree.structure(trainable, is_leaf=is_none)
    b = jax.tree.structure(frozen, is_leaf=is_none)
    if a != b:
        raise ValueError(
            "trainable and frozen pytrees do not match (did the parameters change shape "
            f"since partition()?):\n  trainable: {a}\n  frozen:    {b}"
        )
