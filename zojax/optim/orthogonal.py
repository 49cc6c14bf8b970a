"""ZO-Muon (arXiv 2602.17155): the low-rank ZO estimate of each matrix, orthogonalised before the step.

LoZO's estimate of a matrix ``W`` (``d_in x d_out``) is ``G = mean_k c_k V_k U_k^T``: rank ``K r``, held as
factors. Muon replaces a matrix update by its polar factor ``msign(G)`` (every nonzero singular value set
to 1), so the step moves every direction the estimate found by the same amount, however unevenly the
noisy finite differences weighted them. On the factors that costs Gram-Schmidt of each factor and
Newton-Schulz iterations on a ``K r x K r`` core, run to convergence (:func:`polar_from_factors`) -- no
``d_in x d_out`` decomposition: the polar factor that ZO-Muon's few quintic Newton-Schulz steps approximate.
With K = 1 and the lazy ``V`` as the subspace this is ZO-Muon's step (one query per subspace draw; ZO-Muon
orthonormalises its projection, which the Gram-Schmidt of ``V`` does here); with K members each keeps its own
``V``, so the orthogonalised span is theirs together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from zojax.directions import LowRank
from zojax.optim.gradient import ZOGrad
from zojax.optim.transforms import ScheduleState, _as_schedule, _decays, _require_lowrank
from zojax.paths import map_with_paths

__all__ = ["zo_muon", "polar_from_factors"]

# Newton-Schulz steps: sigma -> 1.5 sigma - 0.5 sigma^3 lifts a singular value of 1e-5 of the largest to 1 (to float32
# precision) in 36 steps; smaller ones stay partly lifted and exact zeros stay 0 (msign(0) = 0)
_NEWTON_SCHULZ_STEPS = 36
# a factor's column whose part outside the earlier columns' span is below this share of its norm adds no direction
_RELATIVE_CUTOFF = 1e-5


def _orthonormal_columns(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Thin QR ``x = q r`` of (..., d, n) by modified Gram-Schmidt, twice (stable to float32 precision for
    the few columns of a low-rank estimate); a column in the span of the earlier ones gets ``q = 0``."""
    n = x.shape[-1]
    cols: list[jax.Array] = []
    r = jnp.zeros(x.shape[:-2] + (n, n), jnp.float32)
    for j in range(n):
        col = x[..., j]
        for _ in range(2):
            for i, qi in enumerate(cols):
                proj = jnp.sum(qi * col, axis=-1)
                col = col - proj[..., None] * qi
                r = r.at[..., i, j].add(proj)
        norm = jnp.linalg.norm(col, axis=-1)
        keep = norm > _RELATIVE_CUTOFF * jnp.linalg.norm(x[..., j], axis=-1)
        cols.append(jnp.where(keep[..., None], col / jnp.where(keep, norm, 1.0)[..., None], 0.0))
        r = r.at[..., j, j].set(jnp.where(keep, norm, 0.0))
    return jnp.stack(cols, axis=-1), r


def _polar_newton_schulz(m: jax.Array) -> jax.Array:
    """The polar factor of small square matrices (..., n, n) by Newton-Schulz iterations
    ``X <- 1.5 X - 0.5 X X^T X`` from ``m / ||m||_F`` (every singular value in (0, 1], inside the
    iteration's basin), run to convergence; zero singular values stay 0."""
    norm = jnp.sqrt(jnp.sum(m * m, axis=(-2, -1), keepdims=True))
    x = jnp.where(norm > 0, m / jnp.where(norm > 0, norm, 1.0), 0.0)

    def newton_schulz(x, _):
        return 1.5 * x - 0.5 * (x @ jnp.swapaxes(x, -1, -2) @ x), None

    return jax.lax.scan(newton_schulz, x, None, length=_NEWTON_SCHULZ_STEPS)[0]


def polar_from_factors(v: jax.Array, u: jax.Array) -> jax.Array:
    """``msign(v u^T)``: the polar factor of a low-rank matrix given as factors ``v`` (..., d_in, q) and
    ``u`` (..., d_out, q), dense (..., d_in, d_out); directions with a zero singular value get 0.

    ``v u^T = qv (rv ru^T) qu^T`` with orthonormal ``qv``, ``qu``, so its polar factor is ``qv msign(core) qu^T``
    for the ``q x q`` core. Matrix multiplies only (Gram-Schmidt, Newton-Schulz): no QR or SVD, which on the
    CPU are LAPACK calls whose batched kernels deadlock a two-thread pool when two run side by side
    (jaxlib 0.10), and on TPUs are slow.

    >>> p = polar_from_factors(jnp.array([[2.0], [0.0]]), jnp.array([[0.0], [-3.0]]))
    >>> (jnp.round(p, 5) + 0.0).tolist()  # (+ 0.0: no negative zeros)
    [[0.0, -1.0], [0.0, 0.0]]
    """
    qv, rv = _orthonormal_columns(v.astype(jnp.float32))
    qu, ru = _orthonormal_columns(u.astype(jnp.float32))
    polar = _polar_newton_schulz(rv @ jnp.swapaxes(ru, -1, -2))
    return qv @ polar @ jnp.swapaxes(qu, -1, -2)


def zo_muon(learning_rate, weight_decay: float = 0.0, decay_mask=None, *, noise: LowRank):
    """ZO-Muon's update: ``W <- W - lr (msign(mean_k c_k V_k U_k^T) + wd W)`` for every matrix, the plain
    ZO-SGD step for vectors (Muon leaves 1-D parameters to another optimiser).

    The update is rank ``K r`` and lies in the span of the members' ``V``: what LoZO's factored state
    keeps. An orthogonalised step has unit singular values, so ``lr`` is a step length per direction
    (Muon's scale), not MeZO's.

    >>> from zojax.directions import LowRank
    >>> opt = zo_muon(0.1, noise=LowRank(rank=1))
    >>> p = {"w": jnp.zeros((4, 3))}
    >>> g = ZOGrad(jax.random.PRNGKey(0), jnp.int32(0), jnp.array([2.0]), LowRank(rank=1))
    >>> upd, _ = opt.update(g, opt.init(p), p)
    >>> round(float(jnp.linalg.norm(upd["w"])), 4)  # a rank-1 step of length lr
    0.1
    """
    _require_lowrank(noise, "zo_muon")
    schedule = _as_schedule(learning_rate, "zo_muon")

    def init(params):
        del params
        return ScheduleState(jnp.zeros([], jnp.int32))

    def update(grad: ZOGrad, state: ScheduleState, params=None):
        if params is None:
            raise ValueError("zo_muon.update needs params (directions are regenerated per leaf)")
        lr = schedule(state.count)
        c = grad.coeffs.astype(jnp.float32)
        k = c.shape[0]

        def one(path, x):
            if not grad.noise.is_matrix(path, x.shape):
                g = grad.leaf_gradient(path, x)
            else:
                d = grad.member_directions(path, x)
                # the K members' factors side by side: one rank-(K r) matrix, its coefficients on U
                side = lambda f: jnp.moveaxis(f, 0, -2).reshape(f.shape[1:-1] + (k * f.shape[-1],))  # noqa: E731
                u = d.u.astype(jnp.float32) * c.reshape((k,) + (1,) * (d.u.ndim - 1))
                g = polar_from_factors(side(d.v), side(u))
            if weight_decay and _decays(decay_mask, grad.noise, path, x):
                g = g + weight_decay * x
            return (-lr * g).astype(x.dtype)

        return map_with_paths(one, params), ScheduleState(state.count + 1)

    return optax.GradientTransformation(init, update)
