"""zojax.random: distribution, independence, addressing (rows / layers / chunks / mesh), fusion.

Statistical checks use fixed keys and bounds of about 5 standard errors, so they are
deterministic and far from flaky, yet catch any real bias (a wrong scale, a lane reused, a
stuck bit, a correlated key).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from zojax import random as zrandom
from zojax.paths import leaf_key

KEY = jax.random.PRNGKey(42)
N = 1 << 20  # 1M values: standard errors 1e-3
FLOATS = [jnp.float32, jnp.bfloat16, jnp.float16]
ROOT = Path(__file__).resolve().parents[2]


def _f64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x, jnp.float32), np.float64).ravel()


def _moments(x):
    x = _f64(x)
    m = x.mean()
    var = x.var()
    kurt = np.mean((x - m) ** 4) / var**2
    return m, var, kurt


def _ks(x) -> float:
    """Kolmogorov-Smirnov distance of a sample from N(0, 1)."""
    x = np.sort(_f64(x))
    cdf = np.asarray(jax.scipy.special.ndtr(jnp.asarray(x, jnp.float32)), np.float64)
    n = x.size
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))


def _corr(a, b) -> float:
    a, b = _f64(a), _f64(b)
    return float(np.corrcoef(a, b)[0, 1])


def _lanes16(key, n):
    """The 16-bit lanes behind a 16-bit-dtype draw of n values."""
    return zrandom._bits(zrandom.key_words(key), 16, (n,), 0, None, (n,), False)


# --- the hash -----------------------------------------------------------------------------


def test_threefry_is_jax_threefry():
    k = jax.random.PRNGKey(123)
    x = jax.random.bits(KEY, (2, 1000), jnp.uint32)
    ours = jax.jit(zrandom.threefry2x32)(k[0], k[1], x[0], x[1])
    theirs = threefry2x32_p.bind(k[0], k[1], x[0], x[1])
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_addresses_are_64_bit():
    """Element i takes lane i % g of hash (tag ^ hi(i // g), lo(i // g)): checked against
    Python integers at indices that cross 2**32 and 2**33."""
    k0, k1 = (int(w) for w in zrandom.key_words(KEY))
    row_shape = (6,)
    rows = np.array([0, 2**31 // 3, 715827882, 715827883, 2**32 // 3 + 5])  # row * 6 crosses 2**32
    got = np.asarray(zrandom.normal_rows(KEY, jnp.asarray(rows, jnp.uint32), row_shape, jnp.bfloat16))
    flat = rows[:, None].astype(object) * 6 + np.arange(6)[None, :]
    ctr = flat // 4
    hi = np.array([int(c >> 32) ^ zrandom._TAGS[16] for c in ctr.ravel()], np.uint32)
    lo = np.array([int(c & 0xFFFFFFFF) for c in ctr.ravel()], np.uint32)
    y0, y1 = (np.asarray(y) for y in threefry2x32_p.bind(np.uint32(k0), np.uint32(k1), hi, lo))
    lane = np.array([int(f % 4) for f in flat.ravel()])
    word = np.where(lane < 2, y0, y1)
    bits = (word >> (16 * (lane % 2)).astype(np.uint32)) & 0xFFFF
    want = zrandom._table16(jnp.bfloat16)[bits].reshape(got.shape)
    assert (flat.max() >= 2**32) and (flat.min() < 2**32)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


# --- distributions ------------------------------------------------------------------------


def test_float32_is_gaussian():
    z = zrandom.normal(KEY, (N,), jnp.float32)
    m, var, kurt = _moments(z)
    se = 1 / math.sqrt(N)
    assert abs(m) < 5 * se
    assert abs(var - 1) < 5 * math.sqrt(2) * se
    assert abs(kurt - 3) < 5 * math.sqrt(24) * se
    assert _ks(z) < 1.95 * se  # the 99.9% critical value
    a = np.abs(_f64(z))
    for t, p in [(2.0, 0.0455003), (3.0, 0.0026998), (4.0, 6.3342e-5), (4.5, 6.7953e-6)]:
        expect = N * p
        assert abs((a > t).sum() - expect) < 5 * math.sqrt(expect) + 1, t
    assert np.all(np.isfinite(a)) and a.max() > 4.5


def test_float32_inverse_cdf_accuracy():
    """Every 32-bit lane maps to its bin's quantile: relative error 1e-6 up to 5.5 sigma
    (beyond, probability 4e-8, still 4e-4), finite and monotone at the extremes."""
    t = np.unique(np.concatenate([np.arange(0, 2**31, 104729), 2 ** np.arange(0, 31), np.arange(64)]))
    z = np.asarray(jax.jit(zrandom._normal32)(jnp.asarray(t, jnp.uint32)), np.float64)  # sign bit clear
    q = (t + 0.5) * 2.0**-31  # two-sided tail mass
    nd = statistics.NormalDist()
    exact = np.array([nd.inv_cdf(1 - qq / 2) for qq in q])
    err = np.abs(z - exact)
    core = exact < 5.5
    assert np.all(err[core] <= 1e-6 * np.maximum(exact[core], 0.05))
    assert np.all(err <= 4e-4 * exact + 1e-7)
    assert 6.3 < z[0] < 6.4 and np.all(np.diff(z) <= 0)
    neg = np.asarray(jax.jit(zrandom._normal32)(jnp.asarray(t, jnp.uint32) | jnp.uint32(1 << 31)))
    np.testing.assert_array_equal(neg, -z.astype(np.float32))


def test_16bit_table():
    """The 65536 values a 16-bit lane maps to: symmetric equal-probability bin midpoints."""
    t = zrandom._quantiles16()
    assert t.shape == (65536,) and abs(t.mean()) < 1e-12 and abs(np.mean(t * t) - 1) < 1e-12
    assert 2.99 < np.mean(t**4) < 3.0 and 4.32 < t.max() < 4.33
    np.testing.assert_array_equal(t[:32768], -t[32768:])
    for dtype in (jnp.bfloat16, jnp.float16):
        td = zrandom._table16(dtype)
        assert td.dtype == jnp.dtype(dtype)
        assert abs(np.mean(td.astype(np.float64) ** 2) - 1) < 1e-4


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float8_e4m3fn])
def test_16bit_computed_equals_table(dtype):
    """Off the CPU 16-bit normals are computed, not looked up (a TPU gathers per element badly): the
    same value as the table for all 65536 lanes, and every lane that is not patched lies at least
    ``_PATCH_ULPS`` float32 ulps from a rounding boundary, so a backend evaluating the float32
    formula that close to the CPU rounds it the same way. Recomputes the patch list."""
    name = jnp.dtype(dtype).name
    bits = jnp.arange(65536, dtype=jnp.uint32)
    got = np.asarray(jax.jit(lambda b: zrandom._computed16(b, dtype))(bits))
    np.testing.assert_array_equal(got.astype(np.float32), zrandom._table16(dtype).astype(np.float32))
    y = np.asarray(jax.jit(lambda b: zrandom._computed16(b, jnp.float32, patched=False))(bits[:32768]))
    rounded = y.astype(jnp.dtype(dtype))
    up = np.nextafter(rounded, np.array(np.inf, rounded.dtype)).astype(np.float64)
    down = np.nextafter(rounded, np.array(-np.inf, rounded.dtype)).astype(np.float64)
    r = rounded.astype(np.float64)
    margin = np.minimum(abs(y - (r + up) / 2), abs(y - (r + down) / 2)) / np.spacing(y).astype(np.float64)
    near = (margin < zrandom._PATCH_ULPS.get(name, 8)) | (r != zrandom._table16(dtype)[:32768].astype(np.float64))
    assert tuple(np.nonzero(near)[0]) == zrandom._PATCHES16.get(name, ())


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_is_gaussian(dtype):
    lanes = _lanes16(KEY, N)
    # every one of the 16 bits is used and uniform: chi-square over all 65536 lane values
    counts = np.bincount(np.asarray(lanes), minlength=65536)
    e = N / 65536
    chi2 = np.sum((counts - e) ** 2 / e)
    assert abs(chi2 - 65535) < 5 * math.sqrt(2 * 65535)
    # the dtype's draw is the lane's exact quantile, rounded to the dtype
    z = zrandom.normal(KEY, (N,), dtype)
    exact = zrandom._quantiles16()[np.asarray(lanes)]
    np.testing.assert_array_equal(np.asarray(z), exact.astype(jnp.dtype(dtype)))
    se = 1 / math.sqrt(N)
    assert _ks(exact) < 1.95 * se
    m, var, kurt = _moments(z)
    assert abs(m) < 5 * se and abs(var - 1) < 5 * math.sqrt(2) * se and abs(kurt - 3) < 5 * math.sqrt(24) * se
    a = np.abs(_f64(z))
    for t, p in [(2.0, 0.0455003), (3.0, 0.0026998), (4.0, 6.3342e-5)]:
        expect = N * p
        assert abs((a > t).sum() - expect) < 5 * math.sqrt(expect) + 1, t
    assert a.max() <= 4.33


def test_rademacher_uses_every_bit():
    s = zrandom.rademacher(KEY, (N,), jnp.float32)
    assert set(np.unique(np.asarray(s)).tolist()) == {-1.0, 1.0}
    per_bit = _f64(s).reshape(-1, 64).mean(axis=0)  # one column per bit of the hash
    assert np.all(np.abs(per_bit) < 5 / math.sqrt(N / 64))
    assert abs(_f64(s).mean()) < 5 / math.sqrt(N)
    assert zrandom.rademacher(KEY, (3,)).dtype == jnp.int32


# --- independence -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "sign"])
def test_independent_across_keys(kind):
    """Members, leaves and steps get keys from zojax.paths.leaf_key: their draws are uncorrelated."""
    draw = (
        (lambda k: zrandom.rademacher(k, (N // 4,), jnp.float32))
        if kind == "sign"
        else (lambda k: zrandom.normal(k, (N // 4,), jnp.dtype(kind)))
    )
    keys = [leaf_key(KEY, 0, 0, "a/kernel"), leaf_key(KEY, 0, 1, "a/kernel"),
            leaf_key(KEY, 1, 0, "a/kernel"), leaf_key(KEY, 0, 0, "b/kernel")]
    zs = [draw(k) for k in keys]
    bound = 5 / math.sqrt(N // 4)
    for i in range(len(zs)):
        for j in range(i):
            assert abs(_corr(zs[i], zs[j])) < bound
    # nor with jax.random's own streams from the same key (split/fold_in/normal use other counters)
    assert abs(_corr(zs[0], jax.random.normal(keys[0], (N // 4,)))) < bound


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "sign"])
def test_independent_neighbours(kind):
    """Values that share a hash (lanes) or sit side by side are uncorrelated, also in square."""
    if kind == "sign":
        z = _f64(zrandom.rademacher(KEY, (N,), jnp.float32))
    else:
        z = _f64(zrandom.normal(KEY, (N,), jnp.dtype(kind)))
    bound = 5 / math.sqrt(N)
    for lag in (1, 2, 3, 4, 32, 64):
        assert abs(_corr(z[:-lag], z[lag:])) < bound, lag
        if kind != "sign":
            assert abs(_corr(z[:-lag] ** 2, z[lag:] ** 2)) < 1.5 * bound, lag


# --- addressing: rows, layers, chunks, strategies, keys -----------------------------------

# a 3-D stack (last axis a multiple of 4, not of 64), a last axis no group divides, one of 64, 1-D
CASES = [((5, 4, 8), "float32"), ((5, 4, 8), "bfloat16"), ((7, 10), "float16"), ((7, 10), "sign"),
         ((9, 64), "sign"), ((6,), "float32")]


def _rows_variants(shape, kind):
    """Everything a caller can draw of one leaf, in one program: (full draw, {name: (draw, rows)})."""
    sign = kind == "sign"
    draw, draw_rows = (zrandom.rademacher, zrandom.rademacher_rows) if sign else (zrandom.normal, zrandom.normal_rows)
    dtype = jnp.float32 if sign else jnp.dtype(kind)

    def full_fn(k, st):
        return draw(k, shape, dtype, strategy=st)

    def rows_fn(k, r, st):
        return draw_rows(k, r, shape[1:], dtype, strategy=st)

    n = shape[0]
    ids = jnp.array([[n - 1, 0, 2], [2, 2, 1]])  # token ids: any shape, with repeats

    # The key is an argument, as in the engine: with a compile-time constant key LLVM may fold
    # float32 logs on the host, 1 ulp away from the compiled code (16-bit and signs are exact).
    @jax.jit
    def draws(k, layer):
        out = {f"full {st}": full_fn(k, st) for st in zrandom.STRATEGIES[1:]}
        for g in zrandom.STRATEGIES:
            out[f"ids {g}"] = (rows_fn(k, ids, g), ids)
            out[f"layer {g}"] = (rows_fn(k, layer, g), layer)  # a traced scalar, as in the layer scan
            layers = jax.lax.scan(lambda c, i, g=g: (c, rows_fn(k, i, g)), 0, jnp.arange(n))[1]
            out[f"scan {g}"] = (layers, jnp.arange(n))
            starts = jnp.minimum(jnp.arange(0, n, 2), n - 2)  # head blocks, the last overlapping
            blocks = jax.lax.map(lambda s, g=g: rows_fn(k, s + jnp.arange(2), g), starts)
            rows = (starts[:, None] + jnp.arange(2)).reshape(-1)
            out[f"blocks {g}"] = (blocks.reshape((-1,) + shape[1:]), rows)
        return out

    return np.asarray(full_fn(KEY, "elementwise")), draws(KEY, jnp.int32(3))


@pytest.mark.parametrize("shape,kind", CASES)
def test_rows_are_the_full_draw(shape, kind):
    full, draws = _rows_variants(shape, kind)
    for st in zrandom.STRATEGIES[1:]:
        np.testing.assert_array_equal(np.asarray(draws.pop(f"full {st}")), full, err_msg=st)
    for name, (got, rows) in draws.items():
        np.testing.assert_array_equal(np.asarray(got), full[np.asarray(rows)], err_msg=name)


def test_rows_do_not_depend_on_row_factoring():
    """A stack of matrices and the same rows as a flat matrix are one draw (64-bit offsets)."""
    big = 2**30 + 7  # big * 32 > 2**34
    a = zrandom.normal_rows(KEY, jnp.array([big], jnp.uint32), (2, 16), jnp.float32)
    b = zrandom.normal_rows(KEY, jnp.array([2 * big, 2 * big + 1], jnp.uint32), (16,), jnp.float32)
    np.testing.assert_array_equal(np.asarray(a).reshape(-1), np.asarray(b).reshape(-1))


def test_keys_typed_raw_and_vmapped():
    typed = jax.random.wrap_key_data(KEY)
    same = zrandom.normal(typed, (4, 4)) == zrandom.normal(KEY, (4, 4))
    assert bool(jnp.all(same))
    keys = jax.random.split(KEY, 3)
    batched = jax.vmap(lambda k: zrandom.normal(k, (4, 8), jnp.bfloat16))(keys)
    for i in range(3):
        alone = zrandom.normal(keys[i], (4, 8), jnp.bfloat16)
        np.testing.assert_array_equal(np.asarray(batched[i]), np.asarray(alone))
    rbg = jax.random.key(0, impl="rbg")  # not threefry: still a pure function of the key
    np.testing.assert_array_equal(np.asarray(zrandom.normal(rbg, (8,))), np.asarray(zrandom.normal(rbg, (8,))))


def test_deterministic_eager_and_jit():
    for dtype in FLOATS:
        eager = zrandom.normal(KEY, (33, 17), dtype)
        again = zrandom.normal(KEY, (33, 17), dtype)
        traced = jax.jit(lambda k: zrandom.normal(k, (33, 17), dtype) * 1)(KEY)  # noqa: B023
        np.testing.assert_array_equal(np.asarray(eager), np.asarray(again))
        np.testing.assert_array_equal(np.asarray(eager), np.asarray(traced))


def test_dtypes_and_shapes():
    for dtype in FLOATS:
        z = zrandom.normal(KEY, (3, 5), dtype)
        assert z.dtype == jnp.dtype(dtype) and z.shape == (3, 5) and bool(jnp.all(jnp.isfinite(z)))
    assert zrandom.normal(KEY, ()).shape == () and zrandom.normal(KEY, 4).shape == (4,)
    assert zrandom.normal(KEY, (0, 3)).shape == (0, 3)
    assert zrandom.rademacher(KEY, (5,), jnp.bfloat16).dtype == jnp.bfloat16
    with pytest.raises(TypeError):
        zrandom.normal(KEY, (3,), jnp.int32)


# --- streams: which hashes, which signs ---------------------------------------------------


def _hashes(width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The two 32-bit words of each hash behind ``n`` values of a ``width``-bit stream, put back
    together from its lanes (value ``i`` is lane ``i % g`` of hash ``i // g``, low lanes first)."""
    g = zrandom.values_per_hash(width)
    lanes = np.asarray(zrandom._bits(zrandom.key_words(KEY), width, (n,), 0, None, (n,), "elementwise"))
    lanes = lanes.astype(np.uint64).reshape(n // g, g)
    half = g // 2
    words = [sum(lanes[:, half * w + j] << np.uint64(width * j) for j in range(half)) for w in (0, 1)]
    return words[0].astype(np.uint32), words[1].astype(np.uint32)


@pytest.mark.parametrize("width", [32, 16, 1])
def test_streams_never_take_a_hash_jax_random_takes(width):
    """jax.random (bits, normal, split, fold_in) takes hash ``c`` of a key at counter ``(0, c)``,
    its 32-bit ``bits`` being the hash's two words XORed; no stream of zojax.random may take one
    of those hashes, or its directions would be jax.random's own draws from the same key."""
    m = 4096
    y0, y1 = _hashes(width, m * zrandom.values_per_hash(width))
    theirs = np.asarray(jax.random.bits(KEY, (m,), jnp.uint32))
    k0, k1 = zrandom.key_words(KEY)
    j0, j1 = (np.asarray(y) for y in threefry2x32_p.bind(k0, k1, jnp.zeros(m, jnp.uint32), jnp.arange(m, dtype=jnp.uint32)))
    np.testing.assert_array_equal(j0 ^ j1, theirs)  # the counters jax.random uses, as written above
    assert not np.any((y0 == j0) & (y1 == j1)) and not np.any(y0 ^ y1 == theirs)


def test_streams_of_different_widths_take_different_hashes():
    n = 64 * 256
    streams = {w: _hashes(w, n * zrandom.values_per_hash(w) // 64) for w in (32, 16, 1)}
    for a in streams:
        for b in streams:
            if a < b:
                assert not np.any((streams[a][0] == streams[b][0]) & (streams[a][1] == streams[b][1])), (a, b)


def test_a_set_bit_is_a_minus_sign():
    """Sign ``i`` is ``-1`` where bit ``i % 64`` of hash ``i // 64`` (low word first, low bit first) is set:
    the convention every existing seed log was trained with, so replay stays bitwise."""
    n = 256
    k0, k1 = zrandom.key_words(KEY)
    tag = jnp.full(n // 64, zrandom._TAGS[1], jnp.uint32)
    y0, y1 = (np.asarray(y) for y in threefry2x32_p.bind(k0, k1, tag, jnp.arange(n // 64, dtype=jnp.uint32)))
    i = np.arange(n)
    word = np.where(i % 64 < 32, y0[i // 64], y1[i // 64])
    bit = (word >> (i % 32).astype(np.uint32)) & 1
    for dtype in (jnp.int32, jnp.float32, jnp.bfloat16):
        got = np.asarray(zrandom.rademacher(KEY, (n,), dtype)).astype(np.float32)
        np.testing.assert_array_equal(got, 1.0 - 2.0 * bit, err_msg=str(dtype))


# --- fusion and mesh ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["float32", "bfloat16", "sign"])
def test_fuses_into_the_update(kind):
    """``w - lr * c * z`` compiles to one pass over ``w``: no direction-sized buffer (signs
    store their hashes first: 1/8 byte per value)."""
    dtype = jnp.float32 if kind == "sign" else jnp.dtype(kind)
    draw = zrandom.rademacher if kind == "sign" else zrandom.normal
    w = jnp.zeros((512, 1024), dtype)

    def update(w, key, c):
        return w - (0.01 * c).astype(dtype) * draw(key, w.shape, w.dtype)

    compiled = jax.jit(update, donate_argnums=0).lower(w, KEY, jnp.float32(0.5)).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp <= (w.size // 8 if kind == "sign" else 64), temp


_MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from zojax import random as zrandom
key = jax.random.PRNGKey(5)
mesh = jax.make_mesh((2,), ("x",))
draws = {"f32": lambda k: zrandom.normal(k, (8, 128), jnp.float32),
         "bf16": lambda k: zrandom.normal(k, (8, 128), jnp.bfloat16),
         "sign": lambda k: zrandom.rademacher(k, (8, 128), jnp.float32)}
for name, draw in draws.items():
    want = np.asarray(jax.jit(draw)(key))
    for spec in (P("x", None), P(None, "x")):
        got = jax.jit(draw, out_shardings=NamedSharding(mesh, spec))(key)
        assert len(got.sharding.device_set) == 2
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
print("ok")
"""


def test_same_values_on_a_mesh():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", _MESH_SCRIPT]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_bench_runs(tmp_path):
    """bench/rng.py end to end at a tiny size (no timing assertions: the CPU is shared)."""
    sys.path.insert(0, str(ROOT))
    from bench import rng as bench_rng

    out = tmp_path / "rng.json"
    args = ["--size", "4096", "--reps", "1", "--dtypes", "bfloat16", "--strategies", "buffered",
            "--json", str(out)]
    results = bench_rng.main(args)
    assert out.exists() and len(results["rows"]) == 6  # (normal alone, fused; signs fused) x 2
    assert {r["generator"] for r in results["rows"]} == {"jax.random", "zojax buffered"}
    assert all(r["values_per_s"] > 0 for r in results["rows"])
