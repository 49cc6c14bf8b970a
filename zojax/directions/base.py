"""The contract of a direction kind, and what every kind shares.

A kind is a frozen dataclass that draws the direction of one leaf from keys and knows what to do
with it: perturb a weight (dense, on the adapter path, or lazily inside the model), sum a
population of its directions into a gradient, bound their entries, and describe itself for the
seed log. Everything else (the scorer, the optimisers, the seed log, the trainer, the config)
reads a kind through this contract and the registry (:mod:`zojax.directions.registry`), never by
testing which kind it is. Adding a kind is one module (a subclass) and one registry line.

The default methods here are the dense kind's: ``z`` an array of the leaf's shape whose values
come from :meth:`DirectionKind.dense`. Low-rank kinds override what differs for their matrices
(:class:`zojax.directions.LowRank`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from zojax import nn
from zojax.paths import is_matrix, leaf_key

__all__ = ["DirectionKind", "NORMAL_MAX"]

# No normal zojax draws exceeds 6.3 sigma (zojax.random float32; 4.3 for 16-bit dtypes) nor
# jax.random.normal's 5.4 (float32) or 8.3 (float64): a safe bound, loose on purpose.
NORMAL_MAX = 16.0

# Up to this many terms (K members, or K members x rank r) a population's gradient is summed
# elementwise (see DirectionKind.gradient and zojax.directions.lowrank.sum_outer).
ELEMENTWISE_MAX_TERMS = 16


class DirectionKind:
    """A kind of random direction: the contract every kind implements (see the module docstring).

    ``stacked`` (a field of each subclass) is a regex searched in each leaf's path (see
    :func:`zojax.paths.path_str`); a leaf it matches carries one leading layer axis, so a
    ``(L, d)`` norm scale is a stack of vectors and a ``(L, d_in, d_out)`` kernel a stack of
    matrices. ``None`` (the default for a pytree zojax knows nothing about) means no leaf is
    stacked. zojax's own models declare theirs (``zojax.models.stacked_paths(model)``); a plain
    NNX model with a ``nnx.List`` of layers has no stacked leaves.
    """

    stacked: str | None  # a field of each subclass
    #: ``zo.method`` of a config that selects this kind (None: library only), see :meth:`from_config`.
    method: ClassVar[str | None] = None

    # --- layout ---------------------------------------------------------------------------

    def is_matrix(self, path: str, shape) -> bool:
        """Whether a leaf is (a stack of) matrices, i.e. gets low-rank directions and decay."""
        return is_matrix(path, shape, self.stacked)

    def trains(self, path: str, shape) -> bool:
        """Whether this kind trains a floating leaf the scope selected (all of them, by default)."""
        return True

    # --- drawing --------------------------------------------------------------------------

    def dense(self, key, shape, dtype) -> jax.Array:
        """The kind's dense values of one leaf: element ``i`` of the flattened array a pure
        function of ``(key, i)``."""
        raise NotImplementedError

    def dense_rows(self, key, shape, dtype, rows) -> jax.Array:
        """``dense(key, shape, dtype)[rows]`` (rows of the leading axis), drawing only those rows."""
        raise NotImplementedError

    def draw(self, key, step, member, path: str, shape, dtype, lazy: bool = False):
        """The direction of one leaf for ``member`` at ``step``: an array of the leaf's shape (or,
        for a low-rank kind's matrices, a :class:`zojax.directions.LowRankDirection`). ``lazy``: a
        low-rank kind's factors of stacked matrices are left undrawn (:class:`zojax.nn.Drawn`) for the adapter path; a
        dense direction is an array either way (the model draws it from the leaf key instead, see
        :meth:`perturb`)."""
        return self.dense(leaf_key(key, step, member, path), tuple(shape), dtype)

    def draw_members(self, key, step, members: int, path: str, shape, dtype):
        """The directions of members ``0 .. members-1`` of one leaf, stacked on a leading axis."""
        return jax.vmap(lambda m: self.draw(key, step, m, path, shape, dtype))(jnp.arange(members))

    def second_moment(self, path: str, shape) -> float:
        """``s`` with ``E[z z^T] = s I`` for this leaf's directions (so ``E[(z . g) z] = s g``)."""
        return 1.0

    @property
    def max_abs(self) -> float:
        """An upper bound on any entry of a direction (for cheap overflow checks)."""
        raise NotImplementedError

    # --- using a direction ----------------------------------------------------------------

    def perturb(self, x, d, scale, *, adapter: bool = False, key=None):
        """``x + scale * d`` for one leaf. ``x`` may be a :class:`zojax.nn.Perturbed` already (the
        adapter state's weights). With ``key`` (the leaf key: ``lazy_dense``) a dense direction is
        left to the model, which draws it where it uses the weight (a :class:`zojax.nn.Noisy`)."""
        if key is not None:
            return nn.Noisy.create(x, key, scale, self)
        return (nn.materialize(x) + jnp.asarray(scale, x.dtype) * d).astype(x.dtype)

    def gradient(self, key, step, coeffs, path: str, x) -> jax.Array:
        """``mean_k coeffs[k] z_k`` for one leaf, never holding K dense directions at once.

        Formed in float32 at least (float64 stays float64), whatever the leaf's dtype: ``c_k z_k``
        of a float16 leaf overflows where the update ``lr c_k z_k`` does not, and the optimisers'
        update bounds bound that float32 arithmetic. Callers cast what they form to the leaf's dtype."""
        k = coeffs.shape[0]
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        c = coeffs.astype(dtype) / k

        def term(m, leaf):
            return c[m] * self.dense(leaf, x.shape, x.dtype).astype(dtype)

        if k <= ELEMENTWISE_MAX_TERMS:
            # Unrolled, the sum is elementwise end to end: XLA fuses the K draws with the caller's
            # ``theta - lr * g`` into one in-place pass over the weight, so the update holds no
            # gradient-sized buffer (a scan would carry one per leaf: a whole extra model copy).
            # The K leaf keys come from one vmapped derivation (a compact program).
            keys = jax.vmap(lambda m: leaf_key(key, step, m, path))(jnp.arange(k))
            acc = term(0, keys[0])
            for m in range(1, k):
                acc = acc + term(m, keys[m])
            return acc

        def add(acc, m):
            return acc + term(m, leaf_key(key, step, m, path)), None

        acc, _ = jax.lax.scan(add, jnp.zeros_like(x, dtype), jnp.arange(k))
        return acc

    # --- describing -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (the seed log's): the registry name and the fields."""
        return {"kind": type(self).__name__, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    @classmethod
    def from_config(cls, zo, stacked: str | None) -> DirectionKind:
        """The kind a config's ``zo`` section describes (for a kind with a :attr:`method`)."""
        return cls(stacked=stacked)  # type: ignore[call-arg]
