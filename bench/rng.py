"""Dense direction generation: zojax.random against jax.random, side by side in one process.

    python bench/rng.py                          # 16M elements, float32 and bfloat16, table
    python bench/rng.py --json bench/results/rng_cpu.json
    python bench/rng.py --size 65536 --reps 3    # seconds (what a smoke test runs)

For each dtype it times, interleaved round-robin under the same background load (the CPU is
shared), the median of ``--reps`` calls of

* ``standalone``: the draw ``z`` alone (one array written), and
* ``fused``: an update ``w - lr * c * z`` (one pass over ``w`` when the draw fuses),

for ``jax.random`` (``normal``, and ``rademacher`` in the fused update; as zojax runs it: zojax's
programs lower large threefry calls on CPU as straight-line code, see
``zojax.accelerator.cpu_lowering``, 3-5x faster than stock jax there) and ``zojax.random``
in each strategy (same values; ``auto`` is buffered for signs, elementwise for normals):
``elementwise`` (each value hashes its own counter), ``grouped`` (one hash per 2/4/64 values
along the last axis, left to XLA's fusion) and ``buffered`` (those hashes stored first). Values
per second are elements over the median wall time; load averages are printed with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``zojax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import common  # noqa: E402
from zojax import accelerator  # noqa: E402
from zojax import random as zrandom  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _shape(size: int) -> tuple[int, int]:
    """A (rows, cols) matrix of ``size`` elements, cols a power of two near sqrt(size)."""
    cols = 1 << max(6, (size.bit_length() - 1) // 2)
    return max(1, size // cols), cols


def _draws(kind: str, strategies):
    """name -> draw(key, shape, dtype) for one kind of direction."""
    ours = zrandom.normal if kind == "normal" else zrandom.rademacher
    draws = {"jax.random": (lambda k, s, d: jax.random.normal(k, s, d)) if kind == "normal"
             else (lambda k, s, d: jax.random.rademacher(k, s, d))}
    for strategy in strategies:
        draws[f"zojax {strategy}"] = lambda k, s, d, strategy=strategy: ours(k, s, d, strategy=strategy)
    return draws


def _programs(shape, dtype, strategies) -> dict[tuple[str, str, str], callable]:
    """(kind, mode, generator) -> a thunk running one compiled program."""
    key = jax.random.PRNGKey(0)
    w = jax.random.normal(jax.random.PRNGKey(1), shape, dtype)
    lr, c = jnp.float32(1e-3), jnp.float32(0.37)
    out = {}
    for kind, modes in (("normal", ("standalone", "fused")), ("rademacher", ("fused",))):
        for gen, draw in _draws(kind, strategies).items():
            if "standalone" in modes:
                f = accelerator.program(lambda k, draw=draw: draw(k, shape, dtype))
                out[(kind, "standalone", gen)] = lambda f=f: f(key)
            def update(w, k, lr, c, draw=draw):
                return w - (lr * c).astype(w.dtype) * draw(k, w.shape, w.dtype)

            g = accelerator.program(update)
            out[(kind, "fused", gen)] = lambda g=g: g(w, key, lr, c)
    return out


def run(size: int, reps: int, dtypes, strategies=zrandom.STRATEGIES[1:]) -> dict:
    shape = _shape(size)
    n = shape[0] * shape[1]
    results = {"machine": common.machine(), "shape": list(shape), "elements": n, "reps": reps, "rows": []}
    for dname in dtypes:
        progs = _programs(shape, DTYPES[dname], strategies)
        load0 = os.getloadavg()
        timings = common.side_by_side({" / ".join(k): f for k, f in progs.items()}, reps=reps)
        load1 = os.getloadavg()
        for (kind, mode, gen) in sorted(progs, key=lambda k: (k[0], k[1] != "standalone")):
            t = timings[" / ".join((kind, mode, gen))]
            base = timings[" / ".join((kind, mode, "jax.random"))]
            results["rows"].append({
                "dtype": dname, "kind": kind, "mode": mode, "generator": gen,
                "median_s": t.median, "values_per_s": n / t.median, "speedup_vs_jax": base.median / t.median,
                "wall_s": t.wall, "loadavg_before": list(load0), "loadavg_after": list(load1),
            })
    results["loadavg_end"] = list(os.getloadavg())
    return results


def table(results: dict) -> str:
    lines = [f"{results['elements']:,} elements {tuple(results['shape'])}, median of {results['reps']}, "
             f"{results['machine'].get('backend')} ({results['machine'].get('cpu')})",
             f"{'dtype':9} {'kind':10} {'mode':10} {'generator':18} {'ms':>9} {'G values/s':>11} "
             f"{'vs jax':>7}  load avg",
             ]
    for r in results["rows"]:
        lines.append(f"{r['dtype']:9} {r['kind']:10} {r['mode']:10} {r['generator']:18} "
                     f"{r['median_s'] * 1e3:9.2f} {r['values_per_s'] / 1e9:11.4f} "
                     f"{r['speedup_vs_jax']:6.2f}x  "
                     f"{r['loadavg_before'][0]:.2f} -> {r['loadavg_after'][0]:.2f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1 << 24, help="elements per array (default 16M)")
    p.add_argument("--reps", type=int, default=7, help="timed calls per program (median reported)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--strategies", default=",".join(zrandom.STRATEGIES[1:]),
                   help="zojax.random strategies to time (comma-separated)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    results = run(args.size, args.reps, args.dtypes.split(","), args.strategies.split(","))
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
