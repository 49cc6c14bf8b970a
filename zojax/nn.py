"""Weights that may carry a low-rank perturbation, and the matmuls that consume them.

A model written with these functions can be scored on zojax's adapter path: a trainable
weight arrives as a :class:`Perturbed` leaf ``W + s v @ u.T`` and the matmul computes
``x @ W + s (x @ v) @ u.T`` without forming the perturbed matrix. When the population
is vmapped and ``W`` is shared (unbatched), XLA folds the population into the batch of
the large GEMM, exactly like multi-LoRA serving. Only where the activations outweigh the
weight (few, narrow matrices and many tokens: small models on CPU) is the perturbed
matrix formed instead, one layer at a time, as that is then the cheaper of the two.

Conventions: a weight has shape ``(..., d_in, d_out)`` (leading axes, e.g. stacked
layers, are batch axes); ``v`` has shape ``(..., d_in, r)`` and ``u`` ``(..., d_out, r)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "Perturbed", "Noisy", "Drawn", "factor", "dense", "embed", "attend", "materialize", "is_perturbed", "factored_is_cheaper", "token_logits",
    "split_high_low",
]


class _WeightLike:
    """``dtype`` and ``ndim`` of a perturbed weight are its base's."""

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self):
        return self.base.ndim


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Perturbed(_WeightLike):
    """A weight ``base + scale * v @ u.T`` kept in factored form.

    ``scale`` (``None``: 1) has the shape of the weight's leading (batch) axes, so it slices
    with stacked layers. ``base`` may itself be a Perturbed: the dynamic adapter state scores
    ``(W + V A^T) + scale v u^T`` with both low-rank terms factored. Scoring passes the signed step ``±eps`` there rather than in ``u``:
    the two signs of a member then share ``v`` and ``u`` unbatched under ``vmap``, and
    anything computed from them alone (``v @ u.T``) is computed once per member. Scoring passes
    the factors as :class:`Drawn` (:func:`factor` draws them where the model uses the weight), so
    a population holds one layer's factors at a time rather than every member's whole direction.

    >>> w = Perturbed(jnp.eye(2), jnp.ones((2, 1)), jnp.ones((2, 1)))
    >>> materialize(w).tolist()
    [[2.0, 1.0], [1.0, 2.0]]
    """

    base: jax.Array | Perturbed
    v: jax.Array | Drawn
    u: jax.Array | Drawn
    scale: jax.Array | None = None

    def scaled_u(self) -> jax.Array:
        """``u`` times ``scale`` (broadcast over its rows and rank)."""
        u = factor(self.u)
        if self.scale is None:
            return u
        return u * jnp.asarray(self.scale, u.dtype)[..., None, None]

    def delta(self) -> jax.Array:
        """``scale * v @ u.T``, formed."""
        d = jnp.einsum("...ir,...or->...io", factor(self.v), factor(self.u))
        if self.scale is not None:
            d = d * jnp.asarray(self.scale, d.dtype)[..., None, None]
        return d

    @property
    def shape(self):
        return self.base.shape

    def transposed(self) -> Perturbed:
        """The weight with its last two axes swapped: ``base.T + scale * u @ v.T``."""
        base = self.base.transposed() if isinstance(self.base, Perturbed) else jnp.swapaxes(self.base, -1, -2)
        return Perturbed(base, self.u, self.v, self.scale)


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["key", "index", "step"], meta_fields=["shape", "dtype", "noise"]
)
@dataclasses.dataclass(frozen=True)
class Drawn:
    """A random array ``noise.dense(key, shape, dtype)`` drawn where it is used, never stored: the
    direction of a :class:`Noisy` weight, or a low-rank factor ``v``/``u`` of a :class:`Perturbed` one.

    Every array field is indexed by the leading axis, so ``lax.scan`` over stacked layers (or a
    dynamic slice of one layer) slices it like the weight: ``key (n, ...)`` (repeated), ``index (n,) =
    arange(n)``, ``step (n,)``. A slice (``index`` a scalar) draws only its own rows, bit for bit the
    full draw's (the kind's ``dense_rows``). 0-D and 1-D arrays carry scalar fields and no ``index``.

    ``step`` (the run's step, ``None`` for a Noisy direction) is a runtime scalar that no population
    axis batches: :meth:`fenced` conditions on it, so XLA draws a factor once per member and layer,
    not once per element of each consumer (a broadcast ``u`` in every sign's and token's sum).

    >>> from zojax.directions import Gaussian
    >>> z = Drawn.create(jax.random.PRNGKey(0), (3, 2), jnp.float32, Gaussian())
    >>> bool(jnp.all(z.draw(jnp.array([2])) == z.draw()[2:]))
    True
    """

    key: jax.Array
    index: jax.Array | None
    step: jax.Array | None
    shape: tuple
    dtype: Any
    noise: Any  # the zojax.directions kind that draws the values (its dense and dense_rows)

    @classmethod
    def create(cls, key, shape, dtype, noise, step=None) -> Drawn:
        shape, dtype = tuple(shape), jnp.dtype(dtype)
        step = None if step is None else jnp.asarray(step, jnp.int32)
        if len(shape) < 2:
            return cls(key, None, step, shape, dtype, noise)
        n = shape[0]
        if step is not None:
            step = jnp.broadcast_to(step, (n,))
        return cls(jnp.broadcast_to(key, (n,) + key.shape), jnp.arange(n), step, shape, dtype, noise)

    @property
    def sliced(self) -> bool:
        """Whether this is one slice of the leading axis (inside a layer scan)."""
        return self.index is not None and self.index.ndim == 0

    def draw(self, rows=None) -> jax.Array:
        """The values (of this slice), or only their leading-axis ``rows``: only the requested rows
        of the full array are drawn."""
        if self.index is None:
            if rows is None or not self.shape:
                z = self.noise.dense(self.key, self.shape, self.dtype)
                return z if rows is None else z[rows]
            return self.noise.dense_rows(self.key, self.shape, self.dtype, rows)
        if self.sliced:
            z = self.noise.dense_rows(self.key, self.shape, self.dtype, self.index)
            return z if rows is None else z[rows]
        key = self.key[0]
        if rows is None:
            return self.noise.dense(key, self.shape, self.dtype)
        return self.noise.dense_rows(key, self.shape, self.dtype, rows)

    def fenced(self, rows=None) -> jax.Array:
        """:meth:`draw` as a buffer XLA cannot fuse into its consumers (a conditional on the runtime
        step, see :func:`zojax.accelerator.fusion_barrier`); a plain draw without a step."""
        if self.step is None:
            return self.draw(rows)
        step = self.step if self.step.ndim == 0 else self.step[0]
        return jax.lax.cond(step >= 0, lambda: self.draw(rows),
                            lambda: jnp.zeros(jax.eval_shape(lambda: self.draw(rows)).shape, self.dtype))


def factor(f, rows=None) -> jax.Array:
    """A low-rank factor's values (or its leading-axis ``rows``): ``f`` itself, or a :class:`Drawn` one drawn."""
    if isinstance(f, Drawn):
        return f.fenced(rows)
    return f if rows is None else f[rows]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Noisy(_WeightLike):
    """A weight ``base + scale * z`` whose dense direction ``z`` (a :class:`Drawn`) is drawn where it is used.

    ``z`` is never stored: :func:`materialize` draws it next to the matmul that consumes the weight, so
    a model that scans over stacked layers holds one layer's perturbed weight at a time, not the whole
    perturbed model (MeZO's memory, with the population still in one program). Values are exactly the
    generic path's. ``scale`` is ``(n,)`` for a stacked weight, sliced with it.

    >>> from zojax.directions import Gaussian
    >>> w = Noisy.create(jnp.zeros((3, 2)), jax.random.PRNGKey(0), 1.0, Gaussian())
    >>> bool(jnp.all(materialize(w) == Gaussian().dense(jax.random.PRNGKey(0), (3, 2), jnp.float32)))
    True
    """

    base: jax.Array
    z: Drawn
    scale: jax.Array

    @classmethod
    def create(cls, base, key, scale, noise) -> Noisy:
        z = Drawn.create(key, base.shape, base.dtype, noise)
        scale = jnp.asarray(scale, jnp.float32)
        if z.index is not None:
            scale = jnp.broadcast_to(scale, base.shape[:1])
        return cls(base, z, scale)

    @property
    def shape(self):
        return self.z.shape

    def direction(self, rows=None) -> jax.Array:
        """``z`` for this weight (or slice), or only its leading-axis ``rows``."""
        return self.z.draw(rows)

    def _scale(self):
        s = self.scale if self.scale.ndim == 0 else self.scale[0]  # (n,) only for an unsliced stack
        return s.astype(self.base.dtype)


def is_perturbed(x) -> bool:
    return isinstance(x, (Perturbed, Noisy))


def materialize(w):
    """The dense matrix a weight stands for (identity on plain arrays)."""
    if isinstance(w, Perturbed):
        return materialize(w.base) + w.delta().astype(w.base.dtype)
    if isinstance(w, Noisy):
        if w.z.sliced:
            # One layer's draw, shared by the population axes the key does not carry (the
            # two signs): a conditional on the runtime layer index is a fusion boundary, so
            # XLA draws z once instead of once per sign inside the fused ``base + s z``.
            z = jax.lax.cond(w.z.index >= 0, w.direction, lambda: jnp.zeros_like(w.base))
        else:
            z = w.direction()
        return w.base + w._scale() * z
    return w


def split_high_low(x: jax.Array, dtype=None) -> tuple[jax.Array, ...]:
    """``x`` as terms in ``dtype`` whose float32 sum is ``x`` to about twice ``dtype``'s significant
    bits: ``(high, low)``, ``high`` = ``x`` rounded to ``dtype``, ``low`` = the rest rounded to
    ``dtype``; ``(x,)`` in ``dtype`` when ``dtype`` is None or not narrower than ``x``. A matmul
    of each term with float32 accumulation keeps what one 16-bit matmul of ``x`` would round away.

    >>> x = jnp.asarray([1.0 + 2.0**-12], jnp.float32)
    >>> high, low = split_high_low(x, jnp.bfloat16)
    >>> float(high[0]), float(high[0].astype(jnp.float32) + low[0].astype(jnp.float32)) == float(x[0])
    (1.0, True)
    """
    if dtype is None or jnp.dtype(dtype).itemsize >= x.dtype.itemsize:
        return (x.astype(dtype or x.dtype),)
    high = x.astype(dtype)
    return high, (x - high.astype(x.dtype)).astype(dtype)


def dense(x: jax.Array, w, bias=None, *, precision=None, preferred_element_type=None) -> jax.Array:
    """``x @ w (+ bias)`` for ``w`` of shape ``(d_in, d_out)``, plain or :class:`Perturbed`;
    ``preferred_element_type``: the result's dtype (default ``x``'s), as in ``jnp.matmul``.

    >>> x = jnp.ones((3, 2))
    >>> w = Perturbed(jnp.zeros((2, 4)), jnp.ones((2, 1)), jnp.ones((4, 1)))
    >>> bool(jnp.allclose(dense(x, w), x @ materialize(w)))
    True
    """
    if isinstance(w, Perturbed) and factored_is_cheaper(x, w):
        y = dense(x, w.base, precision=precision, preferred_element_type=preferred_element_type)
        low = jnp.matmul(x, factor(w.v).astype(x.dtype), precision=precision)
        y = _add_low_rank(y, low, w.scaled_u().astype(x.dtype), precision)
    else:
        y = jnp.matmul(x, materialize(w).astype(x.dtype), precision=precision, preferred_element_type=preferred_element_type)
    if bias is not None:
        y = y + materialize(bias).astype(y.dtype)
    return y


def factored_is_cheaper(x: jax.Array, w: Perturbed) -> bool:
    """Whether ``x @ w`` costs less in factored form than with ``w`` formed (a trace-time choice).

    Both extra costs scale with the rank: the factored form makes two thin passes over the
    activations (``rows * (d_in + d_out) * r``), forming the weight one over the matrix
    (``d_in * d_out * r``, once per member: under the sign ``vmap`` it is shared, see
    :class:`Perturbed`). So the choice is activations against weight size. At batch 16 of 48
    tokens, SmolLM2-135M's 576-wide matrices are formed; OPT-1.3B's and OPT-13B's are not.
    """
    d_in, d_out = w.base.shape[-2:]
    rows = math.prod(x.shape[:-1]) // max(1, math.prod(w.base.shape[:-2]))
    return rows * (d_in + d_out) <= d_in * d_out


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
        return embed(ids, table.base) + jnp.matmul(factor(table.v, ids), jnp.swapaxes(table.scaled_u(), -1, -2)).astype(
            table.base.dtype
        )
    if isinstance(table, Noisy):  # only the looked-up rows of the direction are drawn
        return table.base[ids] + table._scale() * table.direction(ids)
    return table[ids]


def attend(x: jax.Array, table, *, precision=None, preferred_element_type=None) -> jax.Array:
    """``x @ table.T`` for a ``(vocab, d)`` table (tied output heads), plain or :class:`Perturbed`;
    ``preferred_element_type``: the result's dtype (default ``x``'s), as in ``jnp.matmul``."""
    out = {"precision": precision, "preferred_element_type": preferred_element_type}
    if isinstance(table, Perturbed):
        y = attend(x, table.base, **out)
        low = jnp.matmul(x, table.scaled_u().astype(x.dtype), precision=precision)
        # elementwise at a small rank: fused into the logits' consumer (sampling), no second vocabulary-wide buffer
        return _add_low_rank(y, low.astype(y.dtype), factor(table.v).astype(y.dtype), precision)
    if isinstance(table, Noisy):
        return _attend_noisy(x, table, **out)
    return jnp.matmul(x, jnp.swapaxes(table, -1, -2).astype(x.dtype), **out)


def token_logits(h: jax.Array, tokens: jax.Array, *, table=None, kernel=None, precision=None) -> jax.Array:
    """``(h @ head)[..., tokens]`` computed for those vocabulary entries only: ``h (..., d)``,
    ``tokens (..., K)`` int -> ``(..., K)``. The head is a tied ``(vocab, d)`` ``table`` or a
    ``(d, vocab)`` ``kernel``, plain, :class:`Perturbed` or :class:`Noisy` (a Noisy table draws
    only the rows it needs; a Noisy kernel is formed).

    >>> table = jnp.arange(12.0).reshape(4, 3)
    >>> h = jnp.ones((2, 3))
    >>> token_logits(h, jnp.array([[3, 0], [1, 1]]), table=table).tolist()
    [[30.0, 3.0], [12.0, 12.0]]
    >>> bool(jnp.all(token_logits(h, jnp.array([[2]]), kernel=table.T) == attend(h, table)[:, 2:3]))
    True
    """
    if (table is None) == (kernel is None):
        raise ValueError("token_logits needs exactly one of table= (tied) or kernel=")
    if table is None:  # an untied kernel's rows for these tokens are its transpose's
        table = kernel.transposed() if isinstance(kernel, Perturbed) else jnp.swapaxes(materialize(kernel), -1, -2)
    rows = embed(tokens, table)
    return jnp.einsum("...d,...kd->...k", h, rows.astype(h.dtype), precision=precision)


# A Noisy output head is scored in vocabulary blocks of this many rows, so its direction
# (vocab x d: as large as a decoder layer or more) is never held whole.
_ATTEND_BLOCK = 4096


def _attend_noisy(x, table: Noisy, precision=None, preferred_element_type=None):
    """``x @ (base + scale z).T`` = ``x @ base.T + scale (x @ z.T)``, ``z`` drawn block by block."""
    out = {"precision": precision, "preferred_element_type": preferred_element_type}
    y = jnp.matmul(x, jnp.swapaxes(table.base, -1, -2).astype(x.dtype), **out)
    vocab = table.shape[0]
    block = min(_ATTEND_BLOCK, vocab)
    n_blocks = -(-vocab // block)

    def one(i):
        start = jnp.minimum(i * block, vocab - block)  # the last block overlaps: same values
        rows = start + jnp.arange(block)
        z = table.direction(rows)  # (block, d)
        return jnp.matmul(x, jnp.swapaxes(z, -1, -2).astype(x.dtype), **out)

    if n_blocks == 1:
        low = one(0)
    else:
        blocks = jax.lax.map(one, jnp.arange(n_blocks))  # (n, ..., block)
        blocks = jnp.moveaxis(blocks, 0, -2)  # (..., n, block)
        low = blocks.reshape(blocks.shape[:-2] + (n_blocks * block,))
        if n_blocks * block != vocab:  # drop the overlap of the last block
            keep = (n_blocks - 1) * block
            tail = blocks[..., -1, (n_blocks * block - vocab):]
            low = jnp.concatenate([low[..., :keep], tail], axis=-1)
    return y + table._scale().astype(low.dtype) * low
