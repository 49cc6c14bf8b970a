"""Transforms that scale the scored directions coordinate by coordinate, kept in their state.

* :func:`hizoo` -- HiZOO (arXiv 2402.15173): a diagonal Hessian estimate ``H`` preconditions the
  perturbation (``theta ± eps z / sqrt(H)``) and the step; ``H`` is updated from the curvature
  along each direction, which needs the loss at ``theta`` too (``ZOSpec(center=True)``: one
  forward more per step).
* :func:`sparse_mezo` -- Sparse MeZO (arXiv 2402.15751): only the small-magnitude weights of each
  leaf (or layer of a stacked leaf) are perturbed and updated; the mask is recomputed from the
  weights every ``refresh_every`` steps.

Both are :class:`~zojax.optim.transforms.ZOTransformation` s whose ``scale`` the fused step
applies to every direction it scores, and both are replayable from the seed log: the mask is a
function of the weights at a refresh step, ``H`` of the logged coefficients and curvatures.
Dense directions only (Gaussian or Rademacher): a per-coordinate scale does not keep a
low-rank direction low-rank.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
import jax.numpy as jnp

from zojax.directions import LowRank, Noise
from zojax.optim.gradient import ZOGrad
from zojax.optim.transforms import ZOTransformation, _as_schedule, _decays, _unzip
from zojax.paths import leaf_key, map_with_paths
from zojax.types import PyTree

__all__ = ["hizoo", "HiZOOState", "sparse_mezo", "SparseState", "magnitude_mask"]


def _require_dense(noise: Noise, name: str) -> None:
    if isinstance(noise, LowRank):
        raise ValueError(f"{name} needs dense directions (Gaussian or Rademacher noise), got {noise!r}")


def _unchanged_fold(params, state, key, step, force=False):
    del key, step, force
    return params, state


def _plain_view(params, state, key, adapter=True):
    del state, key, adapter
    return params


class HiZOOState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # applied updates so far (shadows tuple.count, as in optax)
    hessian: PyTree  # per trainable leaf: the diagonal estimate H (float32, starts at 1)


def hizoo(learning_rate, smooth: float = 1e-6, weight_decay: float = 0.0, decay_mask=None) -> ZOTransformation:
    """HiZOO: ZO-SGD preconditioned by a diagonal Hessian estimate, as the official code steps.

    A step scores ``theta ± eps z_k / sqrt(H)`` and ``theta`` (``ZOSpec(center=True)``), then, with
    ``h_k = (L+ + L- - 2 L(theta)) / (2 eps^2)`` (``ZOGrad.curvature``) and ``c_k = (L+ - L-) / (2 eps)``::

        H <- (1 - smooth) H + smooth * mean_k |h_k| H z_k^2
        theta <- theta - lr (mean_k c_k z_k / sqrt(H) + wd theta)

    (K = 1 is the paper's step; K members average.) ``smooth`` is the paper's Hessian smoothing
    ``alpha`` (0 keeps ``H = 1``: MeZO with one forward more).

    >>> from zojax.directions import Gaussian
    >>> opt = hizoo(0.1, smooth=0.5)
    >>> p = {"w": jnp.ones(3)}
    >>> g = ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.ones(1), Gaussian(), curvature=jnp.zeros(1))
    >>> upd, state = opt.update(g, opt.init(p), p)
    >>> state.hessian["w"].tolist()  # no curvature seen: H shrinks towards 0 by (1 - smooth)
    [0.5, 0.5, 0.5]
    """
    schedule = _as_schedule(learning_rate, "hizoo")
    if not (0.0 <= smooth <= 1.0):
        raise ValueError(f"hizoo: smooth must be in [0, 1], got {smooth!r}")

    def init(params):
        hessian = map_with_paths(lambda path, x: jnp.ones(x.shape, jnp.float32), params)
        return HiZOOState(jnp.zeros([], jnp.int32), hessian)

    def scale(state: HiZOOState, params):
        del params
        return jax.tree.map(jax.lax.rsqrt, state.hessian)

    def update(grad: ZOGrad, state: HiZOOState, params=None):
        if params is None:
            raise ValueError("hizoo.update needs params (directions are regenerated per leaf)")
        if grad.curvature is None:
            raise ValueError("hizoo needs the curvature of every direction: score with ZOSpec(center=True)")
        _require_dense(grad.noise, "hizoo")
        lr = schedule(state.count)
        k = grad.coeffs.shape[0]
        curvature = jnp.abs(grad.curvature.astype(jnp.float32)) / k

        def one(path, x, h):
            z2 = sum(curvature[m] * jnp.square(_direction(grad, m, path, x)) for m in range(k))
            h = (1.0 - smooth) * h + smooth * h * z2
            g = grad.leaf_gradient(path, x).astype(jnp.float32) * jax.lax.rsqrt(h)
            if weight_decay and _decays(decay_mask, grad.noise, path, x):
                g = g + weight_decay * x
            return (-lr * g).astype(x.dtype), h

        updates, hessian = _unzip(map_with_paths(one, params, state.hessian))
        return updates, HiZOOState(state.count + 1, hessian)

    return ZOTransformation(init, update, _unchanged_fold, _plain_view, scale)


def _direction(grad: ZOGrad, member: int, path: str, x) -> jax.Array:
    # member m's dense direction of one leaf, as scoring drew it (before any scale)
    return grad.noise.dense(leaf_key(grad.key, grad.step, member, path), x.shape, jnp.float32)


class SparseState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # applied updates so far (shadows tuple.count, as in optax)
    mask: PyTree  # per trainable leaf: 1 where the weight is perturbed and updated, else 0 (leaf dtype)


def magnitude_mask(x: jax.Array, sparsity: float, stacked: bool = False) -> jax.Array:
    """1 where ``|x|`` is at most the ``1 - sparsity`` quantile of ``|x|`` (per layer of a stacked
    leaf), else 0: Sparse MeZO's choice of the small weights.

    >>> magnitude_mask(jnp.array([0.1, -3.0, 0.5, 2.0]), 0.5).tolist()
    [1.0, 0.0, 1.0, 0.0]
    """
    a = jnp.abs(x.astype(jnp.float32))
    axes = tuple(range(1, x.ndim)) if stacked and x.ndim > 1 else None
    threshold = jnp.quantile(a, 1.0 - sparsity, axis=axes, keepdims=axes is not None, method="lower")
    return (a <= threshold).astype(x.dtype)


def sparse_mezo(learning_rate, sparsity: float = 0.75, refresh_every: int = 100, weight_decay: float = 0.0,
                decay_mask=None, stacked: str | None = None) -> ZOTransformation:
    """Sparse MeZO: ZO-SGD on the small-magnitude weights only, ``theta <- theta - lr m (g + wd theta)``.

    The mask ``m`` (:func:`magnitude_mask`, a ``1 - sparsity`` share of each leaf, or of each layer
    of a stacked leaf) is computed from the weights at steps ``0, refresh_every, 2 refresh_every, ...``
    -- in the fold, before the step scores -- and scales every direction (``theta ± eps m z``). A
    replay recomputes it from the replayed weights at the same steps. ``stacked`` is the regex of
    paths whose leaves stack layers (the noise's ``stacked``): their threshold is per layer.

    >>> opt = sparse_mezo(0.1, sparsity=0.5)
    >>> opt.init({"w": jnp.array([0.1, -3.0, 0.5, 2.0])}).mask["w"].tolist()
    [1.0, 0.0, 1.0, 0.0]
    """
    schedule = _as_schedule(learning_rate, "sparse_mezo")
    if not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparse_mezo: sparsity (the share of each leaf left frozen) must be in [0, 1), got {sparsity!r}")
    if not isinstance(refresh_every, int) or refresh_every < 1:
        raise ValueError(f"sparse_mezo: refresh_every must be an integer >= 1, got {refresh_every!r}")

    def masks(params):
        def one(path, x):
            return magnitude_mask(x, sparsity, stacked is not None and re.search(stacked, path) is not None)

        return map_with_paths(one, params)

    def init(params):
        return SparseState(jnp.zeros([], jnp.int32), masks(params))

    def fold(params, state: SparseState, key, step, force=False):
        del key, force  # the weights never change here: only the mask is refreshed
        due = jnp.asarray(step, jnp.int32) % refresh_every == 0
        mask = jax.lax.cond(due, masks, lambda p: state.mask, params)
        return params, SparseState(state.count, mask)

    def scale(state: SparseState, params):
        del params
        return state.mask

    def update(grad: ZOGrad, state: SparseState, params=None):
        if params is None:
            raise ValueError("sparse_mezo.update needs params (directions are regenerated per leaf)")
        _require_dense(grad.noise, "sparse_mezo")
        lr = schedule(state.count)

        def one(path, x, m):
            g = grad.leaf_gradient(path, x)
            if weight_decay and _decays(decay_mask, grad.noise, path, x):
                g = g + weight_decay * x
            return (-lr * m * g).astype(x.dtype)

        return map_with_paths(one, params, state.mask), SparseState(state.count + 1, state.mask)

    return ZOTransformation(init, update, fold, _plain_view, scale)
