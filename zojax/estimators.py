"""Loss differences -> per-member coefficients, and fitness shaping.

``losses`` has shape ``(K, 2)``: column 0 is always the loss at ``theta + eps z_k``, column 1
the reference it is compared with -- ``theta - eps z_k`` (two-sided) or ``theta`` (one-sided).
With one layout every estimator reads "column 0 worse than column 1" as "z_k points uphill",
so each descends with either kind of scoring. A coefficient ``c_k`` multiplies ``z_k`` in the
gradient estimate ``g = mean_k c_k z_k``. Every function here is pure and composable.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = [
    "two_sided",
    "one_sided",
    "fzoo",
    "second_difference",
    "sign",
    "zscore",
    "centered_rank",
    "shaped",
    "ESTIMATORS",
    "get_estimator",
    "check_sided",
]


def two_sided(losses, eps):
    """SPSA projected gradient ``(L+ - L-) / (2 eps)``.

    >>> two_sided(jnp.array([[3.0, 1.0]]), 0.5).tolist()
    [2.0]
    """
    return (losses[:, 0] - losses[:, 1]) / (2.0 * eps)


def one_sided(losses, eps):
    """Forward difference ``(L(theta + eps z) - L(theta)) / eps``.

    >>> one_sided(jnp.array([[1.5, 1.0]]), 0.5).tolist()
    [1.0]
    """
    return (losses[:, 0] - losses[:, 1]) / eps


def fzoo(losses, eps):
    """FZOO's normalised one-sided step: ``(L(theta + eps z_k) - L(theta)) / std_k L(theta + eps z_k)``.

    The spread of the K perturbed losses (population std, as the official code) stands in for
    ``eps |g|``, so the step has a fixed size in parameter space whatever the loss scale; ``eps``
    cancels and the result is unitless. Needs K >= 2 (one loss has no spread); equal losses
    give zeros, not a division by zero.

    >>> fzoo(jnp.array([[2.0, 1.0], [0.0, 1.0]]), 1e-3).tolist()
    [1.0, -1.0]
    """
    del eps
    perturbed = losses[:, 0]
    spread = jnp.std(perturbed)
    return (perturbed - losses[:, 1]) / jnp.where(spread > 0, spread, 1.0)


def second_difference(losses, center, eps):
    """Curvature along each direction, ``(L+ + L- - 2 L(theta)) / (2 eps^2)`` (HiZOO's estimate):
    ``z^T H z / 2`` for a quadratic, from the two-sided losses and the loss at ``theta``.

    >>> second_difference(jnp.array([[3.0, 1.0]]), jnp.array(1.0), 1.0).tolist()
    [1.0]
    """
    return (losses[:, 0] + losses[:, 1] - 2.0 * center) / (2.0 * eps**2)


def sign(coeffs):
    """Sign-SGD style coefficients.

    >>> sign(jnp.array([-0.2, 0.0, 3.0])).tolist()
    [-1.0, 0.0, 1.0]
    """
    return jnp.sign(coeffs)


def zscore(x):
    """Standardise fitness values over all entries.

    >>> zscore(jnp.array([1.0, 3.0])).tolist()
    [-1.0, 1.0]
    """
    return (x - x.mean()) / (x.std() + 1e-12)


def centered_rank(x):
    """Ranks mapped onto ``[-0.5, 0.5]`` (evolution strategies' fitness shaping).

    Tied values share their average rank, so equal losses (a 0/1 objective, quantised
    losses, the one-sided base column) carry no signal: all equal gives all zeros.

    >>> centered_rank(jnp.array([10.0, -1.0, 3.0])).tolist()
    [0.5, -0.5, 0.0]
    >>> centered_rank(jnp.array([1.0, 1.0, 0.0, 1.0])).tolist()
    [0.1666666865348816, 0.1666666865348816, -0.5, 0.1666666865348816]
    """
    flat = x.ravel()
    # (2K)^2 comparisons: K is at most a few thousand, and this is exact with ties
    below = jnp.sum(flat[None, :] < flat[:, None], axis=1)
    equal = jnp.sum(flat[None, :] == flat[:, None], axis=1)
    ranks = (below + (equal - 1) / 2.0).astype(jnp.float32)
    return (ranks / max(flat.size - 1, 1) - 0.5).reshape(x.shape)


def shaped(shaping):
    """A two-sided estimator on shaped losses: ``c_k = (f(L+)_k - f(L-)_k) / 2``.

    All ``2K`` losses are shaped jointly; the result is unitless (the learning rate
    absorbs the scale), which is what makes ES-style shaping robust to loss outliers.

    >>> shaped(centered_rank)(jnp.array([[2.0, 1.0], [0.0, 3.0]]), 1e-3).tolist()
    [0.1666666716337204, -0.5]
    """

    def estimator(losses, eps):
        del eps
        f = shaping(losses)
        return (f[:, 0] - f[:, 1]) / 2.0

    return estimator


def _sign_two_sided(losses, eps):
    return sign(two_sided(losses, eps))


ESTIMATORS = {
    "two_sided": two_sided,
    "one_sided": one_sided,
    "fzoo": fzoo,
    "sign": _sign_two_sided,
    "zscore": shaped(zscore),
    "rank": shaped(centered_rank),
}

# The finite differences carry their own scale: each belongs to one kind of scoring (the other
# would halve or double every step). Shaped and sign estimators are unitless and fit both.
SIDED_ONLY = {"two_sided": "two", "one_sided": "one", "fzoo": "one"}


def check_sided(name_or_fn, sided: str) -> None:
    """Refuse a named estimator that does not match the scoring (``sided``).

    >>> check_sided("one_sided", "two")
    Traceback (most recent call last):
    ...
    ValueError: ZOSpec: estimator 'one_sided' needs sided='one', got sided='two'; with sided='two' use one of ['rank', 'sign', 'two_sided', 'zscore']
    """
    if callable(name_or_fn) or SIDED_ONLY.get(name_or_fn, sided) == sided:
        return
    allowed = sorted(n for n in ESTIMATORS if SIDED_ONLY.get(n, sided) == sided)
    raise ValueError(
        f"ZOSpec: estimator {name_or_fn!r} needs sided={SIDED_ONLY[name_or_fn]!r}, got "
        f"sided={sided!r}; with sided={sided!r} use one of {allowed}"
    )


def get_estimator(name_or_fn):
    """Resolve an estimator given by name (see ``ESTIMATORS``) or as a callable."""
    if callable(name_or_fn):
        return name_or_fn
    try:
        return ESTIMATORS[name_or_fn]
    except KeyError:
        raise ValueError(
            f"unknown estimator {name_or_fn!r}; choose one of {sorted(ESTIMATORS)} or pass a "
            "callable (losses[K, 2], eps) -> coeffs[K]"
        ) from None
