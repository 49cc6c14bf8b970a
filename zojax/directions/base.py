"""What every direction kind shares: the layout of stacked leaves and the bound on a normal draw."""

from __future__ import annotations

from zojax.paths import is_matrix

__all__ = ["NORMAL_MAX"]


class _Layout:
    """Which leaves are stacks of per-layer arrays, as the model declares it.

    ``stacked`` is a regex searched in each leaf's path (see :func:`zojax.paths.path_str`); a leaf it
    matches carries one leading layer axis, so a ``(L, d)`` norm scale is a stack of
    vectors and a ``(L, d_in, d_out)`` kernel a stack of matrices. ``None`` (the default
    for a pytree zojax knows nothing about) means no leaf is stacked. zojax's own models
    declare theirs (``zojax.models.stacked_paths(model)``); a plain NNX model with a
    ``nnx.List`` of layers has no stacked leaves.
    """

    stacked: str | None  # a field of each subclass

    def is_matrix(self, path: str, shape) -> bool:
        """Whether a leaf is (a stack of) matrices, i.e. gets low-rank directions and decay."""
        return is_matrix(path, shape, self.stacked)


# No normal zojax draws exceeds 6.3 sigma (zojax.random float32; 4.3 for 16-bit dtypes) nor
# jax.random.normal's 5.4 (float32) or 8.3 (float64): a safe bound, loose on purpose.
NORMAL_MAX = 16.0
