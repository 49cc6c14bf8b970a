"""ZO-Muon (arXiv 2602.17155): the low-rank ZO estimate of each matrix, orthogonalised before the step.

LoZO's estimate of a matrix ``W`` (``d_in x d_out``) is ``G = mean_k c_k V_k U_k^T``: rank ``K r``, held as
factors. Muon replaces a matrix update by its polar factor ``msign(G)`` (every nonzero singular value set
to 1), so the step moves every direction the estimate found by the same amount, however unevenly the
noisy finite differences weighted them. On the factors that costs two thin QRs and the SVD of a
``K r x K r`` core -- no ``d_in x d_out`` decomposition, no Newton-Schulz iterations: the exact polar factor
that ZO-Muon's Newton-Schulz steps approximate. With K = 1 and the lazy ``V`` as the subspace this is
ZO-Muon's step (one query per subspace draw; ZO-Muon orthonormalises its projection, which the QR of
``V`` does here); with K members each keeps its own ``V``, so the orthogonalised span is theirs together.
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

# singular values below this share of the largest are treated as zero (msign(0) = 0, as Newton-Schulz gives)
_RELATIVE_CUTOFF = 1e-5


def polar_from_factors(v: jax.Array, u: jax.Array) -> jax.Array:
    """``msign(v u^T)``: the polar factor of a low-rank matrix given as factors ``v`` (..., d_in, q) and
    ``u`` (..., d_out, q), dense (..., d_in, d_out); directions with a zero singular value get 0.

    >>> p = polar_from_factors(jnp.array([[2.0], [0.0]]), jnp.array([[0.0], [-3.0]]))
    >>> (p + 0.0).tolist()  # (+ 0.0: no negative zeros)
    [[0.0, -1.0], [0.0, 0.0]]
    """
    qv, rv = jnp.linalg.qr(v.astype(jnp.float32))
    qu, ru = jnp.linalg.qr(u.astype(jnp.float32))
    core = rv @ jnp.swapaxes(ru, -1, -2)  # v u^T = qv core qu^T
    left, s, right = jnp.linalg.svd(core, full_matrices=False)
    keep = (s > _RELATIVE_CUTOFF * jnp.max(s, axis=-1, keepdims=True)) & (s > 0)
    polar = (left * keep[..., None, :]) @ right
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
