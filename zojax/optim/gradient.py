"""The ZO gradient: ``(key, step, coeffs)`` standing for ``g = mean_k coeffs[k] * z_k``.

Nothing per direction is stored: the direction kind regenerates the directions of one leaf
from the key when they are needed, leaf by leaf (:meth:`zojax.directions.DirectionKind.gradient`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from zojax.directions import Noise
from zojax.paths import map_with_paths
from zojax.types import PyTree

__all__ = ["ZOGrad", "dense_gradient"]


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["key", "step", "coeffs", "curvature"], meta_fields=["noise"]
)
@dataclasses.dataclass(frozen=True)
class ZOGrad:
    """The estimate ``g = mean_k coeffs[k] * z_k`` described by its seeds.

    >>> import jax.numpy as jnp
    >>> from zojax.directions import LowRank
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

    def leaf_gradient(self, path: str, x) -> jax.Array:
        """``mean_k c_k z_k`` for one leaf, never holding K dense directions at once, in float32 at
        least (:meth:`zojax.directions.DirectionKind.gradient`)."""
        return self.noise.gradient(self.key, self.step, self.coeffs, path, x)

    def member_directions(self, path: str, x):
        """The directions of all K members for one leaf, stacked on a leading K axis."""
        return self.noise.draw_members(self.key, self.step, self.coeffs.shape[0], path, x.shape, x.dtype)


def dense_gradient(grad: ZOGrad, params: PyTree) -> PyTree:
    """The dense gradient pytree a ZOGrad stands for, in the leaves' dtypes (``None`` leaves stay ``None``)."""
    return map_with_paths(lambda path, x: grad.leaf_gradient(path, x).astype(x.dtype), params)
