"""Baselines and diagnostics: the forward gradient along the same directions, and how a ZO
estimate compares with ``jax.grad`` on a small model."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from zojax.directions import draw_directions
from zojax.optim.gradient import PyTree, ZOGrad, dense_gradient
from zojax.scope import combine, partition
from zojax.scoring import ZOSpec, perturb, score

__all__ = ["forward_gradient", "compare_with_grad"]

def forward_gradient(loss_fn, params: PyTree, batch, key, step, spec: ZOSpec, *, frozen=None) -> ZOGrad:
    """Exact directional derivatives ``<grad L, z_k>`` via ``jax.jvp`` along the same directions.

    The forward-gradient baseline: same directions and update path as the ZO estimate,
    with the finite difference replaced by forward-mode AD.
    """
    if frozen is None:
        params, frozen = partition(params, spec.scope, spec.noise)

    def member(m):
        dirs = draw_directions(params, spec.noise, key, step, m)
        tangent = perturb(jax.tree.map(jnp.zeros_like, params), dirs, 1.0, spec.noise)
        f = lambda p: loss_fn(combine(p, frozen), batch)  # noqa: E731
        return jax.jvp(f, (params,), (tangent,))[1]

    coeffs = jax.lax.map(member, jnp.arange(spec.members))
    return ZOGrad(key, jnp.asarray(step, jnp.int32), coeffs.astype(jnp.float32), spec.noise)


def compare_with_grad(loss_fn, params: PyTree, batch, key, spec: ZOSpec, *, num_steps: int = 32) -> dict:
    """How a ZO estimate relates to ``jax.grad`` on a small model.

    Averages the ZO gradient over ``num_steps`` independent draws (steps 0..n-1) and
    reports the cosine similarity of one draw and of the mean with the true gradient,
    and the per-coordinate variance of a single draw relative to ``|grad|^2``.
    """
    trainable, frozen = partition(params, spec.scope, spec.noise)
    true = jax.grad(lambda p: loss_fn(combine(p, frozen), batch))(trainable)
    flat_true = jnp.concatenate([x.ravel() for x in jax.tree.leaves(true)])

    def draw(t):
        losses = score(loss_fn, trainable, batch, key, t, spec, frozen=frozen)
        g = dense_gradient(ZOGrad(key, t, spec.coefficients(losses), spec.noise), trainable)
        return jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])

    draws = jax.lax.map(draw, jnp.arange(num_steps))

    def cos(a, b):
        return jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-30)

    return {
        "cosine_single": float(jnp.mean(jax.vmap(lambda d: cos(d, flat_true))(draws))),
        "cosine_mean": float(cos(draws.mean(0), flat_true)),
        "relative_variance": float(jnp.sum(draws.var(0)) / (jnp.sum(flat_true**2) + 1e-30)),
    }
