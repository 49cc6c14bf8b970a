"""Dense random directions that use every bit of each threefry hash.

``jax.random.normal`` spends one 20-round threefry2x32 hash (64 random bits) on every value,
of which a bfloat16 normal keeps 8 (its normals take 128 distinct values, none beyond 2.9
sigma). Here one hash makes

* 2 ``float32`` normals (one per 32-bit word: inverse CDF fed the tail mass straight from the
  bits, so the tails are right to ~6.3 sigma),
* 4 normals of a 16-bit (or narrower) dtype (one per 16-bit half: an exact 65536-entry
  inverse-CDF table, to 4.32 sigma; on the CPU a 128 KiB constant gather that XLA fuses, the
  fastest there; on TPU and GPU the same values computed, float32 erfinv rounded once with the
  few lanes next to a rounding boundary patched, since a TPU gathers per element ~500x slower
  than it copies), or
* 64 Rademacher signs (one per bit),

all as plain elementwise ops, so XLA fuses the draw into its consumer (``w + eps * z``: one
pass over the weight, no direction-sized buffer; on the CPU signs first store their hashes,
1/8 byte per value).

Addressing. A draw is a pure function of ``(key, i)``, ``i`` the element's row-major index in
the full array (64-bit): element ``i`` takes lane ``i % g`` of hash counter ``i // g``
(``g`` = values per hash). So the full array, any rows of its leading axis
(:func:`normal_rows`: embedding rows, one layer of a stack inside a scan, blocks of a head),
and any sharding of it are bit for bit the same values (signs are integer ops: the same on
every backend; 16-bit dtypes are the table's values on every backend as long as a backend
evaluates the float32 erfinv within 8 ulps of the CPU (bfloat16; lanes nearer a rounding
boundary are patched), checked on the CPU for all 65536 lanes, not yet on a device; float32
goes through ``log``, reproducible
among compiled programs with runtime keys, as the engine's are, while a key that is a
compile-time constant lets LLVM fold the ``log`` on the host, 1 ulp off, as it would for
``jax.random.normal``). The hash counter's high word carries
a per-stream tag, so these streams never reuse a hash that ``jax.random`` (``split``,
``fold_in``, ``normal``: counters below ``2**48``) takes from the same key.

Strategy (how XLA computes; the values never change). ``elementwise``: each element hashes
its own counter: fuses anywhere, no buffer, but a hash is evaluated once per element, not per
group. ``grouped``: one hash per ``g`` values along the last axis, lanes expanded; on CPU XLA's
loop fusion still recomputes it per element (measured: no faster), an accelerator's fusion
may keep it once (measure with ``bench/rng.py``). ``buffered``: grouped with the hash words
stored first (``8 / g`` bytes per value): each hash computed once. ``auto`` (the default):
buffered for signs on the CPU (1/8 byte per value, 3-5x faster there; elementwise on
accelerators, where the TPU compiler's model prices the buffer at 7x a pass), elementwise
for normals (their buffer would be as large as ``z``). Hashing once per group *inside* the
consumer, with no buffer, takes a kernel of its own (Pallas) computing these same lanes.

>>> key = jax.random.PRNGKey(0)
>>> z = normal(key, (4, 6), jnp.bfloat16)
>>> z.shape, z.dtype
((4, 6), dtype(bfloat16))
>>> bool(jnp.all(normal_rows(key, jnp.array([3, 1]), (6,), jnp.bfloat16) == z[jnp.array([3, 1])]))
True
>>> sorted(set(rademacher(key, (100,), jnp.float32).tolist()))
[-1.0, 1.0]
"""

from __future__ import annotations

import functools
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "normal", "normal_rows", "rademacher", "rademacher_rows", "STRATEGIES", "values_per_hash", "key_words",
    "threefry2x32",
]

_U32 = jnp.uint32

# Streams: lane width in bits -> tag XORed into the hash counter's high word. Counters of
# arrays below 2**48 groups leave bits 16..31 of that word clear, so the tags keep the streams
# apart from each other and from jax.random's own counters.
_TAGS = {32: 0x4E320000, 16: 0x4E160000, 1: 0x52010000}


def values_per_hash(width: int) -> int:
    """Values one 64-bit hash makes at ``width`` bits per value.

    >>> values_per_hash(16), values_per_hash(1)
    (4, 64)
    """
    return 64 // width


def _normal_width(dtype) -> int:
    # 16-bit (and narrower) floats hold 11 significant bits at most: 16 random bits per value
    # already resolve them; wider floats get a full 32-bit word for their tails.
    return 16 if jnp.dtype(dtype).itemsize <= 2 else 32


# --- keys and the hash --------------------------------------------------------------------


def key_words(key) -> tuple[jax.Array, jax.Array]:
    """The two uint32 words of a single key: a raw ``uint32[2]`` or typed threefry key as is;
    any other key (``rbg``) through ``jax.random.bits``, still a pure function of the key.

    >>> [int(w) for w in key_words(jax.random.PRNGKey(7))]
    [0, 7]
    """
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jax.random.key_data(key)
        if data.shape[-1:] != (2,):
            data = jax.random.bits(key, (2,), _U32)
    elif key.dtype == _U32 and key.shape == (2,):
        data = key
    else:
        data = jax.random.bits(key, (2,), _U32)
    return data[0], data[1]


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotl(x, d: int):
    return lax.shift_left(x, _U32(d)) | lax.shift_right_logical(x, _U32(32 - d))


def threefry2x32(k0, k1, x0, x1) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds), bit for bit ``jax.extend.random.threefry2x32_p``, unrolled.

    Written out as elementwise ops (jax lowers its primitive on CPU as a rolled loop, which
    only XLA's loop unrolling turns back into a fusable expression); on GPU it is what jax
    emits anyway.

    >>> from jax.extend.random import threefry2x32_p
    >>> k, x = jnp.array([1, 2], jnp.uint32), jnp.arange(4, dtype=jnp.uint32)
    >>> ours, theirs = threefry2x32(k[0], k[1], x, x + 9), threefry2x32_p.bind(k[0], k[1], x, x + 9)
    >>> all(bool(jnp.all(a == b)) for a, b in zip(ours, theirs))
    True
    """
    ks = (k0, k1, k0 ^ k1 ^ _U32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotl(x1, r)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + _U32(i + 1)
    return x0, x1


# --- element addresses --------------------------------------------------------------------


def _mul_wide(x, c: int) -> tuple[jax.Array, jax.Array]:
    """``x * c`` as (high, low) uint32 words, for uint32 ``x`` and a Python int ``0 <= c < 2**32``."""
    xl, xh = x & _U32(0xFFFF), x >> _U32(16)
    cl, ch = _U32(c & 0xFFFF), _U32(c >> 16)
    p0, p1, p2, p3 = xl * cl, xl * ch, xh * cl, xh * ch
    mid = p1 + p2
    carry_mid = (mid < p1).astype(_U32)
    lo = p0 + (mid << _U32(16))
    carry_lo = (lo < p0).astype(_U32)
    hi = p3 + (mid >> _U32(16)) + (carry_mid << _U32(16)) + carry_lo
    return hi, lo


def _row_major_strides(shape) -> tuple[int, ...]:
    strides, s = [], 1
    for n in reversed(shape):
        strides.append(s)
        s *= n
    return tuple(reversed(strides))


def _flat_index(shape, lead: int, row, row_size: int, strides) -> tuple[jax.Array, jax.Array]:
    """(high, low) words of each element's 64-bit index in the full array.

    ``shape``'s first ``lead`` axes index rows (``row``, uint32, of shape ``shape[:lead]``; or
    ``None`` with ``lead == 0``: one row, index 0); the other axes address within a row with
    the given element ``strides`` (all below ``2**32``), so ``index = row * row_size + offset``.
    """
    offset = jnp.zeros(shape, _U32)
    for axis, stride in zip(range(lead, len(shape)), strides):
        if shape[axis] > 1:
            offset = offset + lax.broadcasted_iota(_U32, shape, axis) * _U32(stride)
    if row is None:
        return jnp.zeros(shape, _U32), offset
    hi, lo = _mul_wide(row, row_size)  # once per row, broadcast over the row
    expand = (...,) + (None,) * (len(shape) - lead)
    lo = lo[expand] + offset
    hi = hi[expand] + (lo < offset).astype(_U32)
    return hi, lo


def _take_lane(y0, y1, lane, width: int):
    """Lane ``lane`` (``width`` bits) of the 64-bit hash ``(y0, y1)``."""
    per_word = 32 // width
    word = jnp.where(lane < _U32(per_word), y0, y1)
    if width == 32:
        return word
    shift = (lane & _U32(per_word - 1)) * _U32(width)
    return (word >> shift) & _U32((1 << width) - 1)


STRATEGIES = ("auto", "elementwise", "grouped", "buffered")


def _strategy(strategy: str, width: int) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    # Signs: the buffer is 1/8 byte per value and saves 63 of every 64 hashes (3-5x on CPU).
    # Normals: the buffer would be as large as z itself (2 or 4 bytes per value) and a
    # member-summed update would hold one per member, so they stay elementwise.
    return "buffered" if width == 1 else "elementwise"


def _store(y0, y1):
    """The hash words, stored: XLA never fuses a reduction into its consumers, and an OR with
    zero changes nothing, so this is a fusion boundary that (unlike ``lax.cond``) survives
    ``vmap`` over keys."""
    y = jnp.stack([y0, y1])
    y = lax.reduce(jnp.stack([y, jnp.zeros_like(y)]), _U32(0), lax.bitwise_or, (0,))
    return y[0], y[1]


def _bits(words: tuple[jax.Array, jax.Array], width: int, shape, lead: int, row, row_shape, strategy: str):
    """Uint32 lanes of ``width`` random bits, one per element of ``shape``: element ``i`` (its
    index in the full array) gets lane ``i % g`` of the hash of counter ``i // g``.

    ``elementwise``: each element hashes its own counter. ``grouped``: one hash per ``g``
    elements of the last axis, lanes expanded (XLA may still fuse and so repeat it).
    ``buffered``: as grouped, with the hash words stored first (``8 / g`` bytes per value), so
    each hash is computed once. Same values in all three.
    """
    g = values_per_hash(width)
    s = int(math.log2(g))
    row_size = math.prod(row_shape)
    if row_size >= 2**32:
        raise ValueError(f"a row of {row_size} elements is too large (at most 2**32 - 1)")
    strides = _row_major_strides(row_shape)
    tag = _U32(_TAGS[width])
    if strategy != "elementwise" and len(shape) > lead and shape[-1] % g == 0:
        gshape = shape[:-1] + (shape[-1] // g,)
        hi, lo = _flat_index(gshape, lead, row, row_size, strides[:-1] + (g,))
        ctr_lo = (lo >> _U32(s)) | (hi << _U32(32 - s))
        y0, y1 = threefry2x32(*words, (hi >> _U32(s)) ^ tag, ctr_lo)
        if strategy == "buffered":
            y0, y1 = _store(y0, y1)
        lane = lax.broadcasted_iota(_U32, (1,) * len(gshape) + (g,), len(gshape))
        return _take_lane(y0[..., None], y1[..., None], lane, width).reshape(shape)
    hi, lo = _flat_index(shape, lead, row, row_size, strides)
    ctr_lo = (lo >> _U32(s)) | (hi << _U32(32 - s))
    y0, y1 = threefry2x32(*words, (hi >> _U32(s)) ^ tag, ctr_lo)
    return _take_lane(y0, y1, lo & _U32(g - 1), width)


def _layout(shape):
    """(shape, lead, row, row_shape) of a whole-array draw: one row below 2**32 elements."""
    shape = tuple(int(n) for n in shape)
    if math.prod(shape) < 2**32 or not shape:
        return shape, 0, None, shape
    return shape, 1, lax.iota(_U32, shape[0]), shape[1:]


# --- values from bits ---------------------------------------------------------------------


@functools.cache
def _quantiles16() -> np.ndarray:
    """The 65536 normals a 16-bit lane maps to: the top bit is the sign, the low 15 bits ``t``
    the two-sided tail mass ``(t + 1/2) / 2**15`` (so ``t = 0`` is the extreme, +-4.32): the
    midpoints of 65536 equal-probability bins of N(0, 1), scaled to unit second moment (the
    bins alone give 0.99998; ZO estimators want ``E z^2 = 1``)."""
    nd = statistics.NormalDist()
    half = np.array([nd.inv_cdf(1.0 - (t + 0.5) / 65536.0) for t in range(32768)], np.float64)
    half /= math.sqrt(float(np.mean(half * half)))
    return np.concatenate([half, -half])


@functools.cache
def _table16(dtype) -> np.ndarray:
    # In the output dtype: a 16-bit table is 128 KiB (cache resident), and its entries are the
    # float64 quantiles rounded once, the same on every backend.
    return _quantiles16().astype(jnp.dtype(dtype))


def _lookup16(bits, dtype):
    """Normals from 16-bit lanes by the table: a small constant gather that XLA fuses (the CPU's way)."""
    table = jnp.asarray(_table16(dtype))
    dnums = lax.GatherDimensionNumbers(offset_dims=(), collapsed_slice_dims=(0,), start_index_map=(0,))
    return lax.gather(
        table, bits.astype(jnp.int32)[..., None], dnums, slice_sizes=(1,),
        mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
    )


# Lanes ``t`` (the low 15 bits; the sign bit mirrors them) where :func:`_computed16`'s float32 value
# lies within ``_PATCH_ULPS`` float32 ulps of a rounding boundary of the dtype, or across one, as
# compiled for the CPU: they take the table's value, so a backend whose float32 evaluation of the
# formula is within that many ulps of the CPU's rounds every lane to the table's value.
# tests/engine/test_random.py recomputes both lists.
_PATCH_ULPS = {"bfloat16": 8, "float16": 2}
_PATCHES16: dict[str, tuple[int, ...]] = {
    "bfloat16": (1561, 5118, 8377, 8593, 13611, 15833, 19549, 21707, 26274, 28762, 31890, 32083),
    "float16": (1570, 5179, 5687, 7311, 10549, 11325, 11647, 13279, 14069, 18535, 18600, 18872, 19069, 23102,
                26172, 31829),
}


def _computed16(bits, dtype, patched: bool = True):
    """Normals from 16-bit lanes, computed: the table's quantile (tail mass ``(t + 1/2) / 2**15``
    through the float32 erfinv, scaled as the table is), rounded once to ``dtype``; the few lanes
    next to a rounding boundary (:data:`_PATCHES16`) take the table's value by a compare and select.
    No gather: what TPUs do worst (a per-element table gather costs their compiler's model ~500x a
    copy)."""
    t = bits & _U32(0x7FFF)
    q = (t.astype(jnp.float32) + np.float32(0.5)) * np.float32(2.0**-15)
    z = (_erfinv_tail(q) * np.float32(_scale16())).astype(dtype)
    if patched:
        table = _table16(dtype)
        for lane in _PATCHES16.get(jnp.dtype(dtype).name, ()):
            z = jnp.where(t == _U32(lane), table[lane].astype(dtype), z)
    return jnp.where(bits >> _U32(15) == _U32(1), -z, z)


@functools.cache
def _scale16() -> float:
    """The unit-second-moment scale of :func:`_quantiles16` (the bins' midpoints alone give 0.99998)."""
    nd = statistics.NormalDist()
    return float(_quantiles16()[0] / nd.inv_cdf(1.0 - 0.5 / 65536.0))


def _normal16(bits, dtype):
    """Normals from 16-bit lanes: the table's values on every backend, by a lookup on the CPU (the
    fastest there) and computed elsewhere (:func:`_computed16`)."""
    return lax.platform_dependent(bits, cpu=lambda b: _lookup16(b, dtype), default=lambda b: _computed16(b, dtype))


# Giles' single-precision erfinv ("Approximating the erfinv function", GPU Gems 2012), fed the
# tail mass q = 1 - |x| straight from the bits so the tails keep full precision (forming
# x = 1 - q first would round q away: jax.random.normal's float32 tails stop at 5.3 / 5.4
# sigma). Relative error ~3e-7 up to 5.5 sigma; beyond (probability 4e-8) up to 4e-4.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                   -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _horner(coeffs, x):
    p = jnp.full_like(x, coeffs[0])
    for c in coeffs[1:]:
        p = p * x + np.float32(c)
    return p


def _erfinv_tail(q):
    """``sqrt(2) * erfinv(1 - q)`` in float32 for a tail mass ``0 < q <= 1`` (the normal quantile of ``1 - q/2``)."""
    w = -jnp.log(q * (np.float32(2.0) - q))  # -log(1 - x^2), exact for small q
    central = _horner(_ERFINV_CENTRAL, w - np.float32(2.5))
    tail = _horner(_ERFINV_TAIL, jnp.sqrt(w) - np.float32(3.0))
    return jnp.where(w < np.float32(5.0), central, tail) * (np.float32(math.sqrt(2.0)) * (np.float32(1.0) - q))


def _normal32(bits):
    """float32 normals from 32-bit lanes: sign bit + 31-bit tail mass through erfinv."""
    q = ((bits & _U32(0x7FFFFFFF)).astype(jnp.float32) + np.float32(0.5)) * np.float32(2.0**-31)
    z = _erfinv_tail(q)
    return jnp.where(bits >> _U32(31) == _U32(1), -z, z)


def _normal_values(bits, width: int, dtype):
    if width == 16:
        return _normal16(bits, dtype)
    return _normal32(bits).astype(dtype)


def _sign_values(bits, dtype):
    one = jnp.ones((), dtype)
    return jnp.where(bits == _U32(1), -one, one)


def _check_float(dtype, what):
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{what} needs a floating dtype, got {dtype}")


def _rows_layout(rows, row_shape):
    rows = jnp.asarray(rows)
    if not jnp.issubdtype(rows.dtype, jnp.integer):
        raise TypeError(f"rows must be integer indices, got {rows.dtype}")
    row_shape = tuple(int(n) for n in row_shape)
    return rows.shape + row_shape, rows.ndim, rows.astype(_U32), row_shape


# --- public -------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("kind", "shape", "dtype", "strategy"))
def _draw(key, rows, *, kind: str, shape: tuple, dtype, strategy: str) -> jax.Array:
    # Jitted, so an eager call runs the same fused program as a traced one: the float32 values
    # never depend on whether XLA saw the ops one by one or together (FMA contraction).
    if rows is None:
        shape, lead, row, row_shape = _layout(shape)
    else:
        shape, lead, row, row_shape = _rows_layout(rows, shape)
    width = 1 if kind == "sign" else _normal_width(dtype)
    words = key_words(key)
    if strategy == "auto" and width == 1:
        # auto signs: their stored hashes are 3-5x faster on the CPU, while the TPU compiler's model
        # prices that buffer at 7x a plain pass over the weight; the same values either way
        bits = lax.platform_dependent(
            *words, cpu=lambda *w: _bits(w, width, shape, lead, row, row_shape, "buffered"),
            default=lambda *w: _bits(w, width, shape, lead, row, row_shape, "elementwise"))
    else:
        bits = _bits(words, width, shape, lead, row, row_shape, _strategy(strategy, width))
    return _sign_values(bits, dtype) if kind == "sign" else _normal_values(bits, width, dtype)


def _static(shape, dtype) -> tuple[tuple[int, ...], np.dtype]:
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    return shape, jnp.dtype(dtype)


def normal(key, shape=(), dtype=jnp.float32, *, strategy: str = "auto") -> jax.Array:
    """Standard normals of ``shape``: element ``i`` (row-major) a pure function of ``(key, i)``.

    ``float32``/``float64``: 2 values per hash (``float64`` is float32-grade); 16-bit and
    narrower floats: 4 values per hash. ``strategy`` (see :data:`STRATEGIES`) changes how XLA
    computes, never the values.

    >>> z = normal(jax.random.PRNGKey(1), (3, 8))
    >>> bool(jnp.all(z == normal(jax.random.PRNGKey(1), (3, 8), strategy="buffered")))
    True
    """
    shape, dtype = _static(shape, dtype)
    _check_float(dtype, "normal")
    return _draw(key, None, kind="normal", shape=shape, dtype=dtype, strategy=strategy)


def normal_rows(key, rows, row_shape, dtype=jnp.float32, *, strategy: str = "auto") -> jax.Array:
    """``normal(key, (n,) + row_shape, dtype)[rows]`` for any ``n > max(rows)``, drawing only
    those rows: shape ``rows.shape + row_shape``. ``rows`` are non-negative integers (a traced
    scalar for one layer of a stack, token ids for embedding rows).

    >>> k = jax.random.PRNGKey(2)
    >>> full = normal(k, (5, 4, 3), jnp.float16)
    >>> bool(jnp.all(normal_rows(k, 4, (4, 3), jnp.float16) == full[4]))
    True
    """
    row_shape, dtype = _static(row_shape, dtype)
    _check_float(dtype, "normal_rows")
    return _draw(key, rows, kind="normal", shape=row_shape, dtype=dtype, strategy=strategy)


def rademacher(key, shape=(), dtype=jnp.int32, *, strategy: str = "auto") -> jax.Array:
    """Uniform signs ``+-1`` of ``shape``, 64 per hash (element ``i`` takes bit ``i % 64``).

    By default (``strategy="auto"``) the hashes are stored first when the last axis is a
    multiple of 64 (1/8 byte per value), so each is computed once.

    >>> rademacher(jax.random.PRNGKey(0), (6,)).tolist()
    [-1, 1, 1, 1, 1, 1]
    """
    shape, dtype = _static(shape, dtype)
    return _draw(key, None, kind="sign", shape=shape, dtype=dtype, strategy=strategy)


def rademacher_rows(key, rows, row_shape, dtype=jnp.int32, *, strategy: str = "auto") -> jax.Array:
    """``rademacher(key, (n,) + row_shape, dtype)[rows]``, drawing only those rows."""
    row_shape, dtype = _static(row_shape, dtype)
    return _draw(key, rows, kind="sign", shape=row_shape, dtype=dtype, strategy=strategy)
