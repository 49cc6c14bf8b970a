"""Weights that may carry a low-rank perturbation, and the matmuls that consume them.

A model written with these functions can be scored on zojax's adapter path: a trainable
weight arrives as a :class:`Perturbed` leaf ``W + v @ u.T`` and the matmul computes
``x @ W + (x @ v) @ u.T`` without ever forming the perturbed matrix. When the population
is vmapped and ``W`` is shared (unbatched), XLA folds the population into the batch of
the large GEMM, exactly like multi-LoRA serving.

Conventions: a weight has shape ``(..., d_in, d_out)`` (leading axes, e.g. stacked
layers, are batch axes); ``v`` has shape ``(..., d_in, r)`` and ``u`` ``(..., d_out, r)``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Perturbed", "dense", "embed", "attend", "materialize", "is_perturbed"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Perturbed:
    """A weight ``base + v @ u.T`` kept in factored form.

    >>> w = Perturbed(jnp.eye(2), jnp.ones((2, 1)), jnp.ones((2, 1)))
    >>> materialize(w).tolist()
    [[2.0, 1.0], [1.0, 2.0]]
    """

    base: jax.Array
    v: jax.Array
    u: jax.Array

    @property
    def shape(self):
        return self.base.shape

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self):
        return self.base.ndim


def is_perturbed(x) -> bool:
    return isinstance(x, Perturbed)


def materialize(w):
    """The dense matrix a weight stands for (identity on plain arrays)."""
    if isinstance(w, Perturbed):
        delta = jnp.einsum("...ir,...or->...io", w.v, w.u)
        return w.base + delta.astype(w.base.dtype)
    return w


def dense(x: jax.Array, w, bias=None, *, precision=None) -> jax.Array:
    """``x @ w (+ bias)`` for ``w`` of shape ``(d_in, d_out)``, plain or :class:`Perturbed`.

    >>> x = jnp.ones((3, 2))
    >>> w = Perturbed(jnp.zeros((2, 4)), jnp.ones((2, 1)), jnp.ones((4, 1)))
    >>> bool(jnp.allclose(dense(x, w), x @ materialize(w)))
    True
    """
    if isinstance(w, Perturbed):
        y = jnp.matmul(x, w.base.astype(x.dtype), precision=precision)
        low = jnp.matmul(x, w.v.astype(x.dtype), precision=precision)
        y = _add_low_rank(y, low, w.u.astype(x.dtype), precision)
    else:
        y = jnp.matmul(x, w.astype(x.dtype), precision=precision)
    if bias is not None:
        y = y + materialize(bias).astype(y.dtype)
    return y


# Up to this rank, ``low @ u.T`` is added as ``r`` broadcast products (one elementwise pass
# that XLA fuses with the base matmul's output) instead of a contraction-r dot that writes
# a second ``(rows, d_out)`` array: a dot with a tiny contraction dimension is memory-bound.
_ELEMENTWISE_MAX_RANK = 4


def _add_low_rank(y, low, u, precision=None):
    """``y + low @ u.T`` for ``low (..., rows, r)`` and ``u (..., d_out, r)`` (matmul broadcasting)."""
    r = u.shape[-1]
    if r <= _ELEMENTWISE_MAX_RANK and low.ndim >= 2:
        for j in range(r):
            y = y + low[..., j : j + 1] * jnp.expand_dims(u[..., j], -2)
        return y
    return y + jnp.matmul(low, jnp.swapaxes(u, -1, -2), precision=precision)


def embed(ids: jax.Array, table) -> jax.Array:
    """Row lookup ``table[ids]`` for a ``(vocab, d)`` table, plain or :class:`Perturbed`."""
    if isinstance(table, Perturbed):
        return table.base[ids] + jnp.matmul(table.v[ids], jnp.swapaxes(table.u, -1, -2)).astype(
            table.base.dtype
        )
    return table[ids]


def attend(x: jax.Array, table, *, precision=None) -> jax.Array:
    """``x @ table.T`` for a ``(vocab, d)`` table (tied output heads), plain or :class:`Perturbed`."""
    if isinstance(table, Perturbed):
        y = jnp.matmul(x, jnp.swapaxes(table.base, -1, -2).astype(x.dtype), precision=precision)
        low = jnp.matmul(x, table.u.astype(x.dtype), precision=precision)
        return y + jnp.matmul(low, jnp.swapaxes(table.v, -1, -2).astype(x.dtype), precision=precision)
    return jnp.matmul(x, jnp.swapaxes(table, -1, -2).astype(x.dtype), precision=precision)
