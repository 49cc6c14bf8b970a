"""The ZO gradient: ``(key, step, coeffs)`` standing for ``g = mean_k coeffs[k] * z_k``.

Nothing per direction is stored; every function here regenerates the directions of one
leaf from the key when it needs them, leaf by leaf.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from zojax.accelerator import fusion_barrier
from zojax.directions import LowRank, Noise, dense_direction, leaf_direction
from zojax.paths import leaf_key, path_str
from zojax.types import PyTree

__all__ = ["ZOGrad", "dense_gradient"]



@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["key", "step", "coeffs", "curvature"], meta_fields=["noise"]
)
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
    # (K,) second differences (L+ + L- - 2 L(theta)) / (2 eps^2) when the spec scores theta too
    # (ZOSpec.center, HiZOO); None otherwise. The seed log records them: HiZOO's state needs them.
    curvature: jax.Array | None = None


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
        v, u = fusion_barrier((v, u), step)
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


def _unzip(pairs: PyTree) -> tuple[PyTree, PyTree]:
    """A pytree of ``(a, b)`` pairs (one per trainable leaf) as two pytrees."""
    is_pair = lambda t: isinstance(t, tuple)  # noqa: E731
    return (
        jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair),
        jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair),
    )
