"""zojax benchmarks: a ZO step costs about one inference of the same sequences.

    python bench/run.py --quick --json bench/results/cpu_quick.json   # every CPU measure, reduced size
    python bench/run.py --json bench/results/cpu_full.json            # full sizes (slow on 2 cores)
    python bench/run.py --device-suite --json gpu.json                 # OPT-1.3B/13B shapes, bf16 (gpu.sh)
    python bench/run.py --tiny --json /tmp/t.json                      # seconds; what the tests run
    python bench/run.py --device-suite --tiny                          # the device suite at a tiny shape

Measures (the README's Benchmarks section has what each compares and the latest numbers):
  1. efficiency  one ZO step / one plain forward over the same 2·K·B sequences (LoZO, factorized, MeZO)
  2. torch       the official-style PyTorch MeZO / LoZO step time / zojax's step time
  3. memory      peak bytes of a dense MeZO step with K=16 / plain inference (XLA memory analysis)
  4. scaling     step time against K and B next to inference of the same number of sequences

The top-level JSON keys are the headline numbers; ``details`` holds every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``zojax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from bench import common, measures  # noqa: E402

TARGETS = {
    "inference_efficiency_lozo": ("<=", 1.10),
    "inference_efficiency_factorized": ("<=", 1.10),
    "inference_efficiency_mezo": ("<=", 1.30),
    "speedup_vs_torch_k1": (">=", 2.0),
    "speedup_vs_torch_k8": (">=", 2.5),
    "memory_ratio_mezo": ("<=", 1.30),
    "device_lozo_step_s_opt13b_b16": ("<=", 0.088),
    "device_inference_efficiency_lozo": ("<=", 1.10),
}

# name -> settings. ``layers``: None = the whole model; quick truncates depth (real SmolLM2
# weights, first layers) at the batch so that every measure runs in about 10 minutes on 2 cores.
PROFILES = {
    "full": dict(models=[("smollm2-135m", None), ("opt-125m", None)], batch=16, seq=48, members=(1, 8), reps=5,
                 torch_model=("smollm2-135m", None), torch_reps=3,
                 memory_model=("smollm2-135m", None),
                 scaling_model=("smollm2-135m", None), scaling_k=(1, 2, 4, 8, 16), scaling_b=(4, 8, 16, 32),
                 scaling_reps=3),
    # the batch (16 prompts of 48 tokens) and K, on truncated models; the first call
    # (compile + run) is the only warm-up
    "quick": dict(models=[("smollm2-135m", 4), ("opt-125m", 2)], batch=16, seq=48, members=(1, 8), reps=3,
                  warmup=0, torch_model=("smollm2-135m", 4), torch_reps=2,
                  memory_model=("smollm2-135m", None), memory_batch=16, memory_seq=48,
                  scaling_model=("smollm2-135m", 4), scaling_batch=8, scaling_k=(1, 2, 4, 8), scaling_b=(4, 8, 16),
                  scaling_reps=2),
    # every code path at toy size, few distinct programs (compiles dominate at this size)
    "tiny": dict(models=[("tiny-llama", None)], batch=4, seq=16, members=(1, 8), reps=1,
                 torch_model=("tiny-llama", None), torch_reps=1,
                 memory_model=("tiny-llama", None), memory_members=8,
                 scaling_model=("tiny-llama", None), scaling_k=(1, 8), scaling_b=(4, 8), scaling_reps=1),
    # the device suite (gpu.sh): OPT-1.3B and OPT-13B shapes, bf16, one accelerator
    "device": dict(models=[("opt-1.3b", None), ("opt-13b", None)], batch=16, seq=48, members=(1, 8), reps=5,
                   memory_model=("opt-1.3b", None),
                   scaling_model=("opt-1.3b", None), scaling_k=(1, 2, 4, 8, 16), scaling_b=(16, 32, 64, 128),
                   scaling_reps=3, dtype="bfloat16"),
    "device-tiny": dict(models=[("tiny-opt", None)], batch=4, seq=16, members=(1, 8), reps=1,
                        memory_model=("tiny-opt", None), memory_members=8,
                        scaling_model=("tiny-opt", None), scaling_k=(1, 2), scaling_b=(4, 8), scaling_reps=1,
                        dtype="bfloat16"),
}
ALL = ("efficiency", "torch", "memory", "scaling")


def _short(name: str) -> str:
    return {"smollm2-135m": "smollm2", "opt-125m": "opt125m", "opt-1.3b": "opt1.3b", "opt-13b": "opt13b",
            "tiny-llama": "tinyllama", "tiny-opt": "tinyopt"}.get(name, name.replace("-", ""))


def _check(results: dict) -> dict:
    out = {}
    for key, (op, bound) in TARGETS.items():
        v = results.get(key)
        if v is None:
            continue
        out[key] = {"value": v, "target": f"{op} {bound}", "met": bool(v <= bound if op == "<=" else v >= bound)}
    return out


def run(profile: str, only=ALL, json_path: str | None = None, log=print, reps: int | None = None,
        members: tuple[int, ...] | None = None) -> dict:
    import jax
    import jax.numpy as jnp

    p = dict(PROFILES[profile])
    if members:
        p["members"] = members
    cache = common.enable_compilation_cache()
    dtype = jnp.dtype(p.get("dtype", "float32"))
    device = profile.startswith("device")
    t_start = time.time()
    results: dict = {"profile": profile, "machine": common.machine(), "details": {},
                     "compilation_cache": cache is not None}
    reps = reps or p["reps"]
    warmup = p.get("warmup", 1)
    log(f"zojax bench, profile {profile!r} on {results['machine']['cpu']} "
        f"({results['machine']['cores']} cores, backend {jax.default_backend()})")

    bundles = {}

    def get(name, layers):
        key = (name, layers)
        if key not in bundles:
            t0 = time.time()
            bundles[key] = common.load(name, layers=layers, dtype=dtype)
            log(f"  loaded {bundles[key].describe()} in {time.time() - t0:.1f}s")
        return bundles[key]

    details = results["details"]
    if "efficiency" in only:
        eff = details["efficiency"] = {}
        worst = {m: 0.0 for m in common.METHODS}
        for name, layers in p["models"]:
            r = measures.inference_efficiency(get(name, layers), members=p["members"], batch_size=p["batch"],
                                              seq_len=p["seq"], reps=reps, warmup=warmup, log=log)
            eff[name] = r
            for k, row in r["by_k"].items():
                for m in common.METHODS:
                    results[f"inference_efficiency_{m}_{_short(name)}_k{k}"] = row[m]["ratio"]
                    worst[m] = max(worst[m], row[m]["ratio"])
            if device and name == "opt-13b":
                results["device_lozo_step_s_opt13b_b16"] = r["by_k"][str(p["members"][0])]["lozo"]["step_s"]
            if not device and name in ("opt-125m", "opt-1.3b", "opt-13b"):
                bundles.pop((name, layers), None)  # free it; the other measures use SmolLM2
                common.release()
        # headline: the worst case over models and K (stricter than any single configuration)
        prefix = "device_" if device else ""
        for m in common.METHODS:
            results[f"{prefix}inference_efficiency_{m}"] = worst[m]

    if "torch" in only and "torch_model" in p:
        name, layers = p["torch_model"]
        r = measures.torch_speedup(get(name, layers), members=p["members"], batch_size=p["batch"], seq_len=p["seq"],
                                   reps=p.get("torch_reps", reps), warmup=warmup, log=log)
        details["torch"] = r
        for k, row in r["by_k"].items():
            for m, v in row.items():
                results[f"speedup_vs_torch_{m}_k{k}"] = v["speedup"]
            # headline: the slower of the two algorithms (LoZO on the adapter path, full MeZO)
            results[f"speedup_vs_torch_k{k}"] = min(v["speedup"] for v in row.values())

    if "memory" in only:
        name, layers = p["memory_model"]
        r = measures.memory(name, layers, batch_size=p.get("memory_batch", p["batch"]),
                            seq_len=p.get("memory_seq", p["seq"]), members=p.get("memory_members", 16), log=log)
        details["memory"] = r
        results["memory_ratio_mezo"] = r["mezo"]["ratio"]
        results["memory_ratio_lozo"] = r["lozo"]["ratio"]

    if "scaling" in only:
        name, layers = p["scaling_model"]
        fixed_b = p.get("scaling_batch", p["batch"])
        r = measures.scaling(get(name, layers), members=p["scaling_k"], batch_sizes=p["scaling_b"],
                             fixed_batch=fixed_b, seq_len=p["seq"], reps=p["scaling_reps"], warmup=warmup, log=log)
        details["scaling"] = r
        results["scaling_k_step_over_inference"] = r["members"]["step_over_inference"]
        results["scaling_b_step_over_inference"] = r["batch_size"]["step_over_inference"]
        results["scaling_k_growth_ratio_max"] = max(r["members"]["growth_ratio"])
        results["scaling_b_growth_ratio_max"] = max(r["batch_size"]["growth_ratio"])

    results["targets"] = _check(results)
    results["elapsed_s"] = time.time() - t_start
    try:
        results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        pass
    log(f"done in {results['elapsed_s']:.0f}s")
    for key, v in results["targets"].items():
        log(f"  {key:40s} {v['value']:8.3f}  target {v['target']:8s} {'met' if v['met'] else 'NOT met'}")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(_jsonable(results), indent=1))
        log(f"wrote {json_path}")
    return results


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        return x.item()
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced sizes: every CPU measure in about 10 minutes on 2 cores")
    ap.add_argument("--tiny", action="store_true", help="tiny random models: checks the code paths in seconds")
    ap.add_argument("--device-suite", action="store_true",
                    help="OPT-1.3B / OPT-13B shapes in bf16 on the default accelerator (what gpu.sh runs)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {ALL}")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate (after warm-up)")
    ap.add_argument("--members", default=None, help="comma-separated K values for efficiency and torch (default 1,8)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.device_suite:
        profile = "device-tiny" if args.tiny else "device"
    else:
        profile = "tiny" if args.tiny else ("quick" if args.quick else "full")
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = set(only) - set(ALL)
    if bad:
        ap.error(f"unknown measures {sorted(bad)}; known: {ALL}")
    if profile.startswith("device"):
        only = tuple(m for m in only if m != "torch")  # the torch baseline is the CPU comparison
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    members = tuple(int(k) for k in args.members.split(",")) if args.members else None
    run(profile, only, args.json, reps=args.reps, members=members)


if __name__ == "__main__":
    main()
