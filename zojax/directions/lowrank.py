"""LoZO's low-rank directions ``V U^T`` with a lazy ``V``, and the factors of one direction."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from zojax import nn
from zojax import random as zrandom
from zojax.accelerator import fusion_barrier
from zojax.directions.base import ELEMENTWISE_MAX_TERMS, NORMAL_MAX, DirectionKind
from zojax.paths import leaf_key

__all__ = ["LowRank", "LowRankDirection", "sum_outer"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LowRankDirection:
    """A direction ``v @ u.T`` kept as factors: arrays (``u`` already carries the kind's scale) or, for the
    adapter path, :class:`zojax.nn.Drawn` factors the model draws where it uses them (``u`` unscaled)."""

    v: jax.Array | nn.Drawn
    u: jax.Array | nn.Drawn

    def dense(self) -> jax.Array:
        return jnp.einsum("...ir,...or->...io", nn.factor(self.v), nn.factor(self.u))


def sum_outer(v, u, step) -> jax.Array:
    """``sum_k v_k u_k^T`` for factors ``(K, ..., d_in, r)`` and ``(K, ..., d_out, r)``."""
    k, rank = v.shape[0], v.shape[-1]
    if k * rank <= ELEMENTWISE_MAX_TERMS:
        # A few outer products summed elementwise: XLA fuses them with the caller's
        # ``theta - lr * g`` into one pass over the weight, where a contraction-(K r) dot
        # writes g first and runs memory-bound (5x slower at LoZO's K r = 2 on CPU).
        v, u = fusion_barrier((v, u), step)
        acc = v[0, ..., :, 0, None] * u[0, ..., None, :, 0]
        for m in range(k):
            for j in range(rank):
                if m or j:
                    acc = acc + v[m, ..., :, j, None] * u[m, ..., None, :, j]
        return acc
    # one matmul over the concatenated rank axis
    return jnp.einsum("k...ir,k...or->...io", v, u)


@dataclasses.dataclass(frozen=True)
class LowRank(DirectionKind):
    """LoZO directions ``Z = V U^T`` for every matrix leaf.

    For a weight stored ``(..., d_in, d_out)``, ``V`` (``d_in x rank``) is resampled only
    every ``refresh_every`` steps (the lazy factor) and ``U`` (``d_out x rank``) is fresh
    every step -- LoZO's ``U V^T`` for torch's ``(d_out, d_in)`` layout. Leading axes
    (stacked layers, declared by ``stacked``) get independent factors. 1-D leaves get dense
    Gaussian directions (``vectors="dense"``, as the official LoZO) or are frozen
    (``vectors="exclude"``); a stacked per-layer vector (shape (L, d) on a path ``stacked``
    matches) counts as 1-D.

    The lazy factor sits on the stored first axis (``d_in``). For an embedding table stored
    ``(vocab, d)`` that is the vocabulary side -- the input side of the lookup, as for every
    linear layer -- where the official LoZO, going by torch's ``(out, in)`` layout, puts
    it on ``d``. Each entry of ``V U^T`` has the same variance either way and both factors
    are drawn row by row for the looked-up tokens, so cost and variance do not pick a
    side; zojax keeps one rule for every matrix.

    Every kind with factored directions derives from this class (LoZO-M and the dynamic adapter
    state need ``rank`` and ``refresh_every``); a subclass changes what differs, e.g. the values
    of the factors and vectors (:meth:`dense`, :meth:`dense_rows`) or the factors' scale (:attr:`scale`).

    Factors are drawn like dense directions (:mod:`zojax.random`, row-addressable), so the adapter
    path can draw a stack's factors one layer at a time inside a layer scan (``draw(..., lazy=True)``),
    bit for bit.

    >>> LowRank(rank=2, refresh_every=100).rank
    2
    """

    rank: int = 2
    refresh_every: int = 100
    vectors: str = "dense"
    stacked: str | None = None

    method: ClassVar[str | None] = "lozo"

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LowRank: rank must be an integer >= 1, got {self.rank!r}")
        if not isinstance(self.refresh_every, int) or self.refresh_every < 1:
            raise ValueError(
                f"LowRank: refresh_every must be an integer >= 1, got {self.refresh_every!r}"
            )
        if self.vectors not in ("dense", "exclude"):
            raise ValueError(f"LowRank: vectors must be 'dense' or 'exclude', got {self.vectors!r}")

    @classmethod
    def from_config(cls, zo, stacked: str | None) -> LowRank:
        return cls(rank=zo.rank, refresh_every=zo.refresh_every, vectors=zo.vectors, stacked=stacked)

    @property
    def scale(self) -> float:
        return 1.0

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction: ``rank`` products of two normals, scaled
        (and the dense normals of 1-D leaves)."""
        return max(self.rank * NORMAL_MAX**2 * self.scale, NORMAL_MAX)

    def trains(self, path: str, shape) -> bool:
        return self.vectors == "dense" or self.is_matrix(path, shape)

    # the values of 1-D leaves' dense directions and of every factor: Gaussian, as in the official LoZO
    def dense(self, key, shape, dtype) -> jax.Array:
        return zrandom.normal(key, shape, dtype)

    def dense_rows(self, key, shape, dtype, rows) -> jax.Array:
        return zrandom.normal_rows(key, jnp.asarray(rows), tuple(shape)[1:], dtype)

    def draw(self, key, step, member, path: str, shape, dtype, lazy: bool = False):
        if not self.is_matrix(path, shape):
            return super().draw(key, step, member, path, shape, dtype, lazy)
        lead, d_in, d_out = tuple(shape[:-2]), shape[-2], shape[-1]
        step = jnp.asarray(step)
        v_step = (step // self.refresh_every) * self.refresh_every
        v_key = jax.random.fold_in(leaf_key(key, v_step, member, path), 1)
        u_key = jax.random.fold_in(leaf_key(key, step, member, path), 0)
        v_shape, u_shape = lead + (d_in, self.rank), lead + (d_out, self.rank)
        if lazy and lead:
            # A stack's factors are drawn where the model uses them, one layer per scan step; the kind's
            # scale goes with the signed step (perturb). A lone matrix's are drawn here: nothing would
            # slice them, so the model would draw them whole at every use (a tied head at every decode step).
            return LowRankDirection(nn.Drawn.create(v_key, v_shape, dtype, self, step),
                                    nn.Drawn.create(u_key, u_shape, dtype, self, step))
        v, u = self.dense(v_key, v_shape, dtype), self.dense(u_key, u_shape, dtype)
        if self.scale != 1.0:
            u = u * jnp.asarray(self.scale, dtype)
        return LowRankDirection(v, u)

    def second_moment(self, path: str, shape) -> float:
        # each entry of V U^T sums rank products of two unit-variance factors, times scale
        return self.rank * self.scale**2 if self.is_matrix(path, shape) else 1.0

    def perturb(self, x, d, scale, *, adapter: bool = False, key=None):
        if not isinstance(d, LowRankDirection):
            return super().perturb(x, d, scale, adapter=adapter, key=key)
        if isinstance(d.u, nn.Drawn):  # a lazy u is drawn unscaled
            scale = scale * self.scale
        if adapter:
            return nn.Perturbed(x, d.v, d.u, jnp.broadcast_to(jnp.asarray(scale, jnp.float32), x.shape[:-2]))
        u = nn.factor(d.u)
        u = u * jnp.asarray(scale, u.dtype)
        return (nn.materialize(x) + jnp.einsum("...ir,...or->...io", nn.factor(d.v), u)).astype(x.dtype)

    def gradient(self, key, step, coeffs, path: str, x) -> jax.Array:
        if not self.is_matrix(path, x.shape):
            return super().gradient(key, step, coeffs, path, x)
        k = coeffs.shape[0]
        dtype = jnp.promote_types(x.dtype, jnp.float32)  # as the dense kinds' (see DirectionKind.gradient)
        c = coeffs.astype(dtype) / k
        d = self.draw_members(key, step, k, path, x.shape, x.dtype)
        cv = d.v.astype(dtype) * c.reshape((k,) + (1,) * (d.v.ndim - 1))
        return sum_outer(cv, d.u.astype(dtype), step)
