"""Decoder building blocks shared by the model families: param containers and the pure math.

The containers (:class:`Linear`, :class:`Embed`, :class:`LayerNorm`, :class:`RMSNorm`) only hold
``nnx.Param`` leaves, so a model's state has HF-like paths; with ``stack=L`` each leaf gets a
leading layer axis, which is how a family stacks its decoder layers for ``lax.scan``. The math
lives in functions of plain arrays or :class:`~zojax.nn.Perturbed` leaves, so the same code runs
the trained weights and the engine's perturbed ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from zojax import nn as znn
from zojax.precision import vector_dtype

__all__ = [
    "ACTIVATIONS",
    "Embed",
    "LayerNorm",
    "Linear",
    "RMSNorm",
    "activation",
    "attention",
    "layer_norm",
    "linear",
    "normal",
    "rms_norm",
    "sliceable",
    "vector",
]

# HF ``hidden_act`` / ``activation_function`` names.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation HF calls ``name``; ValueError for one zojax does not know."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# --- parameter containers ---------------------------------------------------------------------


def normal(rngs: nnx.Rngs, shape, dtype, std=0.02):
    """N(0, std^2) init. Eagerly it draws on the host: jax's threefry compiles once per
    distinct shape (about 0.3 s each on CPU, seconds for even a tiny model), and these
    weights are placeholders a loader overwrites. Traced (jit, ``nnx.eval_shape``) it stays
    in jax, so abstract construction allocates nothing."""
    key = rngs.params()
    try:
        seed = np.asarray(jax.random.key_data(key)).ravel().tolist()
    except jax.errors.TracerArrayConversionError:
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * std
    return jnp.asarray(x, dtype=dtype)


def _stacked(stack: int | None, *shape: int) -> tuple[int, ...]:
    return shape if stack is None else (stack, *shape)


class Linear(nnx.Module):
    """``kernel (d_in, d_out)`` and an optional ``bias (d_out,)``; ``stack=L`` prepends ``L``."""

    def __init__(self, d_in, d_out, *, bias: bool, stack: int | None, param_dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(normal(rngs, _stacked(stack, d_in, d_out), param_dtype))
        self.bias = nnx.Param(jnp.zeros(_stacked(stack, d_out), param_dtype)) if bias else None


class Embed(nnx.Module):
    """A lookup table ``embedding (n, d)``."""

    def __init__(self, n, d, *, param_dtype, rngs: nnx.Rngs):
        self.embedding = nnx.Param(normal(rngs, (n, d), param_dtype))


class LayerNorm(nnx.Module):
    """``scale`` and ``bias (d,)``, both absent when not ``affine``."""

    def __init__(self, d, *, affine: bool = True, stack: int | None, param_dtype):
        self.scale = nnx.Param(jnp.ones(_stacked(stack, d), param_dtype)) if affine else None
        self.bias = nnx.Param(jnp.zeros(_stacked(stack, d), param_dtype)) if affine else None


class RMSNorm(nnx.Module):
    """``scale (d,)``."""

    def __init__(self, d, *, stack: int | None, param_dtype):
        self.scale = nnx.Param(jnp.ones(_stacked(stack, d), param_dtype))


def sliceable(x):
    """Make a stacked leaf safe to ``lax.scan`` over.

    A stacked 3-D kernel's Perturbed factors carry the layer axis and slice with it. A 2-D
    stacked leaf (bias, norm scale: ``(L, d)``) perturbed as one ``L x d`` matrix does not: its
    ``u`` is ``(d, r)``; it is small, so form it densely.
    """
    if isinstance(x, znn.Perturbed) and x.base.ndim < 3:
        return znn.materialize(x)
    return x


# --- pure math ---------------------------------------------------------------------------------


def vector(p) -> jax.Array:
    """A 1-D leaf (norm scale, bias; plain or perturbed) in :func:`zojax.precision.vector_dtype`.

    Under bfloat16 compute a norm scale near 1.78 has a spacing of 0.0078, so ``scale +- eps z``
    with MeZO's ``eps = 1e-3`` would round to the same number and every loss difference would be
    exactly 0; these leaves are few, so computing with them in float32 costs nothing."""
    w = znn.materialize(p)
    return w.astype(vector_dtype(w.dtype))


def linear(x, p):
    """``x @ kernel (+ bias)`` for a :class:`Linear`'s param dict; the bias is added in
    :func:`zojax.precision.vector_dtype` before the sum is cast back to ``x``'s dtype."""
    y = znn.dense(x, p["kernel"])
    bias = p.get("bias")
    if bias is None:
        return y
    b = vector(bias)
    return (y.astype(jnp.promote_types(y.dtype, b.dtype)) + b).astype(y.dtype)


def layer_norm(x, p, dtype, eps):
    """LayerNorm with the optional ``scale``/``bias`` of ``p``; result in ``dtype``."""
    # Statistics in float32: bf16 variance of wide activations loses too many bits.
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    if p.get("scale") is not None:
        y = y * vector(p["scale"])
    if p.get("bias") is not None:
        y = y + vector(p["bias"])
    return y.astype(dtype)


def rms_norm(x, scale, eps, dtype=None):
    """RMSNorm; the result in ``dtype`` (default ``x``'s)."""
    # Statistics in float32 as HF does. HF multiplies in the compute dtype (weight * x.to(dtype));
    # here the scale is applied in float32 (vector) and only the product is rounded, so a
    # perturbation of the scale below the compute dtype's spacing still reaches the output.
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return (vector(scale) * y).astype(dtype or x.dtype)


def attention(q, k, v, valid, scale=None):
    """Grouped-query softmax attention; ``(B, S, H * D)``.

    q: ``(B, S, H, D)``; k, v: ``(B, T, Hkv, D)`` with ``H`` a multiple of ``Hkv`` (equal for
    plain multi-head attention); valid: ``(B, S, T)``, True where query ``s`` may see key ``t``.
    ``scale`` multiplies the scores; None when the family already scaled ``q``.
    """
    B, S, H, D = q.shape
    n_kv = k.shape[2]
    # Query heads that share a key/value head get a group axis g; plain multi-head attention
    # gets none, so XLA keeps its simpler layouts (on CPU, a size-1 group adds transposes).
    g = "g" if n_kv != H else ""
    q = q.reshape(B, S, n_kv, H // n_kv, D) if g else q
    scores = jnp.einsum(f"bsn{g}d,btnd->bn{g}st", q, k, preferred_element_type=jnp.float32)
    if scale is not None:
        scores = scores * scale
    # A finite fill keeps fully masked rows (padding queries) NaN-free: they become uniform.
    valid = valid[:, None, None] if g else valid[:, None]
    scores = jnp.where(valid, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum(f"bn{g}st,btnd->bsn{g}d", probs, v).reshape(B, S, H * D)
