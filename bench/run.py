"""zojax benchmarks: a ZO step costs about one inference of the same sequences.

    python bench/run.py --quick --json bench/results/cpu_quick.json   # every CPU measure, reduced size
    python bench/run.py --json bench/results/cpu_full.json            # full sizes (slow on 2 cores)
    python bench/run.py --device-suite --json gpu.json                 # OPT-13B shape, bf16 (gpu.sh)
    python bench/run.py --tiny --json /tmp/t.json                      # seconds; what the tests run
    python bench/run.py --device-suite --tiny --json /tmp/g.json       # the device suite at a tiny shape

Measures (docs/benchmarks.md has what each compares and the latest numbers):
  1. efficiency  one ZO step / one plain forward over the same 2·K·B sequences (LoZO, factorized, MeZO)
  2. torch       the official-style PyTorch MeZO / LoZO step time / zojax's step time
  3. memory      peak bytes of a K=16 step / plain inference of the sequences it holds at once (XLA memory
                 analysis): dense MeZO and LoZO one member at a time against one batch, LoZO all at once
                 against the same 2·K·B sequences
  4. scaling     step time against K and B next to inference of the same number of sequences

The top-level JSON keys are the headline numbers; ``details`` holds every measurement.
The device suite (``--device-suite``, what bench/gpu.sh runs) is described at :func:`run_device`.
"""

from __future__ import annotations

import argparse
import contextlib
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
    "memory_ratio_lozo": ("<=", 1.30),
    "memory_ratio_lozo_chunked": ("<=", 1.30),
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
    # the device suite (gpu.sh, run_device): the OPT-13B shape, bf16, batch 16 x 48, K = 1 and 8,
    # LoZO at batch 16..128; reps 3 after one warm-up (compiles, not repetitions, take the time)
    "device": dict(model="opt-13b", batch=16, seq=48, batches=(16, 32, 64, 128), mfu_batch=64, reps=3,
                   warmup=1, torch_members=(1,), torch_device="cuda", rng_size=1 << 27, dtype="bfloat16",
                   estimates=True),
    # the same units at a tiny shape (runs on CPU; the headline keys keep their names)
    "device-tiny": dict(model="tiny-opt", batch=16, seq=8, batches=(16, 32, 64, 128), mfu_batch=64, reps=1,
                        warmup=0, torch_members=(1,), torch_device="cpu", rng_size=1 << 16, dtype="bfloat16",
                        estimates=False),
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
            if name in ("opt-125m", "opt-1.3b", "opt-13b"):
                bundles.pop((name, layers), None)  # free it; the other measures use SmolLM2
                common.release()
        # headline: the worst case over models and K (stricter than any single configuration)
        for m in common.METHODS:
            results[f"inference_efficiency_{m}"] = worst[m]

    if "torch" in only:
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
        results["memory_ratio_lozo_chunked"] = r["lozo_chunked"]["ratio"]

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
    with contextlib.suppress(OSError):  # no /proc on this OS
        results["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    log(f"done in {results['elapsed_s']:.0f}s")
    for key, v in results["targets"].items():
        log(f"  {key:40s} {v['value']:8.3f}  target {v['target']:8s} {'met' if v['met'] else 'NOT met'}")
    if json_path:
        _write(json_path, results)
        log(f"wrote {json_path}")
    return results


def _write(json_path: str, results: dict):
    """Write the JSON whole or not at all (a run killed mid-write leaves the previous file)."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(results), indent=1))
    os.replace(tmp, path)


# --- the device suite (bench/gpu.sh) ---------------------------------------------------------

#: The MFU denominator. NVIDIA H200 SXM datasheet: 989 TFLOPS BF16 Tensor Core, dense (the
#: 1,979 on the sheet is with 2:4 sparsity). ``--peak-tflops`` or ``ZOJAX_PEAK_TFLOPS`` sets
#: another accelerator's.
H200_BF16_PEAK_FLOPS = 989e12
H200_PEAK_SOURCE = "NVIDIA H200 datasheet, BF16 Tensor Core dense (989 TFLOPS)"

#: The seed paper's LoZO step on the OPT-13B shape, seconds by batch (its GPU unnamed).
SEED_PAPER_LOZO_S = {16: 0.088, 32: 0.123, 64: 0.205, 128: 0.367}

#: Issue 11's targets (OPT-13B shape, bf16, one H200, batch 16 x 48), in the table's order.
DEVICE_TARGETS = {
    "forward_vs_torch": ("<=", 1.00),
    "inference_efficiency_lozo_k1": ("<=", 1.05),
    "inference_efficiency_lozo_k8": ("<=", 1.05),
    "lozo_step_s_opt13b_b16": ("<=", 0.070),
    "lozo_step_s_opt13b_b32": ("<=", 0.115),
    "lozo_step_s_opt13b_b64": ("<=", 0.200),
    "lozo_step_s_opt13b_b128": ("<=", 0.360),
    "forward_mfu_b64": (">=", 0.75),
    "inference_efficiency_factorized_k1": ("<=", 1.15),
    "inference_efficiency_factorized_k8": ("<=", 1.15),
    "inference_efficiency_mezo_k1": ("<=", 1.5),
    "inference_efficiency_mezo_k8": ("<=", 1.8),
    "speedup_vs_torch_lozo_k1": (">=", 3.0),
    "speedup_vs_torch_mezo_k1": (">=", 2.0),
    "rng_zojax_over_torch": (">=", 1.0),
}
#: Reported without a target of their own (the ratio above is theirs).
DEVICE_INFO = ("rng_values_per_s_zojax", "rng_values_per_s_torch", "forward_unrolled_over_scan",
               "forward_without_xla_defaults", "lozo_k1_without_xla_defaults")

#: Units in the order they run: what the targets need most first, the longest last, so a run
#: cut short by ``--budget`` (or killed) has the headline numbers. ``m_kK``: method m, K
#: members at the base batch; ``lozo_bB``: LoZO, K = 1 at batch B (b16 is ``lozo_k1``).
DEVICE_UNITS = ("torch", "lozo_k1", "mezo_k1", "lozo_b64", "rng", "factorized_k1", "lozo_b128", "lozo_b32",
                "lozo_k8", "factorized_k8", "mezo_k8", "unrolled", "xla_options")

#: Rough guesses of a unit's seconds on one H200 with a cold compilation cache (compiles
#: dominate), used only to skip a unit that would not finish inside ``--budget``.
DEVICE_ESTIMATE_S = {"torch": 60, "lozo_k1": 90, "mezo_k1": 75, "lozo_b64": 75, "rng": 30,
                     "factorized_k1": 60, "lozo_b128": 75, "lozo_b32": 70, "lozo_k8": 60, "factorized_k8": 60,
                     "mezo_k8": 110, "unrolled": 120, "xla_options": 120}


def _unit_step(name: str, base_batch: int) -> tuple[str, int, int]:
    """``lozo_k8`` -> ("lozo", 8, base batch); ``lozo_b64`` -> ("lozo", 1, 64)."""
    method, what = name.rsplit("_", 1)
    n = int(what[1:])
    return (method, n, base_batch) if what[0] == "k" else (method, 1, n)


def _gpu_info() -> dict:
    """nvidia-smi's view (no jax: the torch process has to find the device free)."""
    import subprocess

    fields = ("name", "driver_version", "memory.total", "power.limit")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"name": None, "driver": None}
    rows = [dict(zip(("name", "driver", "memory_total", "power_limit"), (v.strip() for v in line.split(","))))
            for line in out if line.strip()]
    return {**(rows[0] if rows else {"name": None, "driver": None}), "count": len(rows)}


def _versions() -> dict:
    """Package versions, read from metadata (cheap, and nothing imported before the torch process runs)."""
    import platform
    import subprocess
    from importlib import metadata

    names = ["jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"]
    gpu_prefixes = ("jax-cuda", "nvidia-cublas")  # jax's CUDA plugin, cuBLAS
    names += sorted(d.metadata["Name"] for d in metadata.distributions()
                    if (d.metadata["Name"] or "").lower().replace("_", "-").startswith(gpu_prefixes))
    out = {"python": platform.python_version()}
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "zojax", "bench"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:  # the device's copy of the tree may carry no .git
            out["zojax_commit"] = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _accelerator_backend() -> str:
    """jax's default backend, asked in a throwaway process that reserves no device memory."""
    import subprocess

    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "unknown"


def _fmt(key: str, v) -> str:
    if v is None:
        return "not measured"
    if key.startswith("rng_values"):
        return f"{v / 1e9:.1f} G/s"
    if key.startswith("forward_mfu"):
        return f"{100 * v:.1f}%"
    if "_step_s_" in key:
        return f"{v:.3f} s"
    return f"{v:.3f}"


class DeviceSuite:
    """The units of :func:`run_device`, the results they fill, and the JSON written after each."""

    def __init__(self, profile: str, json_path: str | None, budget_s: float | None, peak: tuple[float, str],
                 reps: int | None, log, prior: dict | None = None):
        self.p = dict(PROFILES[profile])
        self.json_path, self.budget_s, self.log = json_path, budget_s, log
        self.reps = reps or self.p["reps"]
        self.t_start = time.time()
        self.bundle = None
        self.results: dict = {
            "profile": profile, "complete": False, "model": self.p["model"], "batch_size": self.p["batch"],
            "seq_len": self.p["seq"], "dtype": self.p["dtype"], "gpu": _gpu_info(), "versions": _versions(),
            "peak_flops": peak[0], "peak_source": peak[1], "budget_s": budget_s, "reps": self.reps,
            "env": {k: os.environ[k] for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_PLATFORMS")
                    if k in os.environ},
            "units": {}, "details": {"steps": {}}, "errors": {},
        }
        if prior:
            self.resume(prior)

    def resume(self, prior: dict):
        """Keep a previous run's finished units (``--resume``): a second device call measures only
        what the first had no time for. The headline keys are recomputed from the details."""
        if prior.get("profile") != self.results["profile"]:
            raise ValueError(f"--resume: that file is profile {prior.get('profile')!r}, "
                             f"not {self.results['profile']!r}")
        done = {n: dict(u, resumed=True) for n, u in prior["units"].items() if u["status"] == "done"}
        self.results["units"].update(done)
        self.results["details"] = prior["details"]
        torch_side = {k: v for k, v in prior["versions"].items() if k.startswith("torch_side_")}
        self.results["versions"].update(torch_side)
        self.results["resumed_from"] = {k: prior.get(k) for k in ("gpu", "elapsed_s", "device_kind",
                                                                  "versions")}
        self.derive()

    # -- running ------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.time() - self.t_start

    def run(self, units) -> dict:
        for name in units:
            if self.results["units"].get(name, {}).get("status") == "done":
                continue  # resumed
            est = DEVICE_ESTIMATE_S[name] if self.p["estimates"] else 0
            if self.budget_s is not None and self.elapsed() + est > self.budget_s:
                self.results["units"][name] = {"status": "skipped", "why": f"budget {self.budget_s:.0f}s "
                                               f"(at {self.elapsed():.0f}s, unit estimate {est}s)"}
                self.log(f"  [{name}] skipped: would pass the budget")
                continue
            t0 = time.time()
            try:
                self.run_unit(name)
                self.results["units"][name] = {"status": "done", "s": time.time() - t0}
            except Exception as e:  # noqa: BLE001 - one failed unit must not cost the others' numbers
                import traceback

                self.results["errors"][name] = traceback.format_exc()[-4000:]
                self.results["units"][name] = {"status": "error", "s": time.time() - t0, "why": repr(e)[:300]}
                self.log(f"  [{name}] FAILED: {e!r}")
                import gc

                gc.collect()
            self.derive()
            self.write()
        r = self.results
        r["complete"] = all(r["units"].get(n, {}).get("status") == "done" for n in DEVICE_UNITS)
        r["elapsed_s"] = self.elapsed()
        self.write()
        return r

    def run_unit(self, name: str):
        if name == "torch":
            self.unit_torch()
        elif name == "unrolled":  # the layer scan against an unrolled loop (per-layer weight slices)
            self.results["details"]["unrolled"] = measures.unrolled_forward(
                self.get_bundle(), self.p["batch"], self.p["seq"], reps=self.reps, warmup=self.p["warmup"], log=self.log)
        elif name == "xla_options":  # zojax's accelerator defaults against none
            self.results["details"]["xla_options"] = measures.xla_options(
                self.get_bundle(), self.p["batch"], self.p["seq"], reps=self.reps, warmup=self.p["warmup"], log=self.log)
        elif name == "rng":
            self.ensure_jax()
            self.results["details"]["rng"] = measures.dense_draws(self.p["rng_size"], reps=max(self.reps, 3),
                                                                  dtype=self.p["dtype"], log=self.log)
        else:
            self.unit_step(name, *_unit_step(name, self.p["batch"]))

    def write(self) -> bool:
        # nothing measured yet: leave whatever file is there (a failed start must not clobber results)
        if not self.json_path or not any(u["status"] == "done" for u in self.results["units"].values()):
            return False
        self.results["elapsed_s"] = self.elapsed()
        self.results["targets"] = self.check()
        _write(self.json_path, self.results)
        return True

    # -- units --------------------------------------------------------------------------------

    def unit_torch(self):
        """The PyTorch numbers, in a process of its own, before jax claims the device."""
        import subprocess
        import tempfile

        p = self.p
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "torch.json"
            script = Path(__file__).resolve().parent / "torch_baseline.py"
            cmd = [sys.executable, str(script), "--model", p["model"], "--batch", str(p["batch"]),
                   "--seq", str(p["seq"]),
                   "--members", ",".join(map(str, p["torch_members"])), "--reps", str(self.reps),
                   "--warmup", str(p["warmup"]), "--rng-size", str(p["rng_size"]), "--dtype", p["dtype"],
                   "--device", p["torch_device"], "--json", str(out)]
            # its jax (batches only) stays on the host; the device is torch's alone
            env = dict(os.environ, JAX_PLATFORMS="cpu")
            left = None if self.budget_s is None else max(120.0, self.budget_s - self.elapsed())
            subprocess.run(cmd, env=env, check=True, timeout=left)
            self.results["details"]["torch"] = r = json.loads(out.read_text())
        self.results["versions"].update({f"torch_side_{k}": v for k, v in r["versions"].items()})

    def ensure_jax(self):
        """jax's first touch of the device (after the torch process has let it go)."""
        if "machine" not in self.results:
            import jax

            self.results["machine"] = common.machine()
            self.results["device_kind"] = jax.devices()[0].device_kind
            self.log(f"  jax {jax.__version__} on {self.results['device_kind']} ({jax.default_backend()})")
            if "H200" not in self.results["device_kind"] and self.results["peak_source"] == H200_PEAK_SOURCE:
                self.log("  note: not an H200; forward_mfu_b64 uses the H200 peak (set --peak-tflops)")

    def get_bundle(self):
        if self.bundle is None:
            import jax.numpy as jnp

            self.ensure_jax()
            t0 = time.time()
            self.bundle = common.load(self.p["model"], dtype=jnp.dtype(self.p["dtype"]))
            self.results["model"] = self.bundle.describe()
            self.log(f"  loaded {self.results['model']} in {time.time() - t0:.1f}s")
        return self.bundle

    def unit_step(self, name: str, method: str, members: int, batch_size: int):
        bundle = self.get_bundle()
        r = measures.step_vs_forward(bundle, method, members, batch_size, self.p["seq"], reps=self.reps,
                                     warmup=self.p["warmup"], log=self.log)
        self.results["details"]["steps"][name] = r
        if members == 1 and batch_size == self.p["mfu_batch"]:
            flops = measures.forward_flops(bundle, r["sequences"], self.p["seq"])
            self.results["details"]["forward_mfu"] = {"batch_size": batch_size, "sequences": r["sequences"],
                                                      "seq_len": self.p["seq"], "flops": flops,
                                                      "forward_s": r["forward_s"],
                                                      "tflop_per_s": flops / r["forward_s"] / 1e12}

    # -- the headline keys, all from ``details`` (so a resumed run recomputes them alike) ------------

    def derive(self):
        res, d = self.results, self.results["details"]
        steps = d["steps"]
        for r in steps.values():
            m, k, b = r["method"], r["members"], r["batch_size"]
            if b == self.p["batch"]:
                res[f"inference_efficiency_{m}_k{k}"] = r["ratio"]
            if m == "lozo" and k == 1:
                res[f"lozo_step_s_opt13b_b{b}"] = r["step_s"]
        if "forward_mfu" in d:
            f = d["forward_mfu"]
            res[f"forward_mfu_b{f['batch_size']}"] = f["flops"] / f["forward_s"] / res["peak_flops"]
        if "rng" in d:
            res["rng_values_per_s_zojax"] = d["rng"]["values_per_s"]
        if "unrolled" in d:
            res["forward_unrolled_over_scan"] = d["unrolled"]["unrolled_over_scan"]
        if "xla_options" in d:  # time without the defaults / time with them: > 1 means they help
            res["forward_without_xla_defaults"] = d["xla_options"]["forward_plain_over_defaults"]
            res["lozo_k1_without_xla_defaults"] = d["xla_options"]["lozo_plain_over_defaults"]
        if "torch" in d:
            self.derive_torch(d["torch"], steps)
        if "rng_values_per_s_zojax" in res and "rng_values_per_s_torch" in res:
            res["rng_zojax_over_torch"] = res["rng_values_per_s_zojax"] / res["rng_values_per_s_torch"]

    def derive_torch(self, torch_r: dict, steps: dict):
        res = self.results
        # torch.normal alone (the comparison row): the stricter reading than torch's update
        res["rng_values_per_s_torch"] = torch_r["rng"]["normal_values_per_s"]
        # zojax's forward of the 2·B base-batch sequences (every K = 1 unit at that batch times it)
        base = ("lozo_k1", "mezo_k1", "factorized_k1")
        zf = next((steps[u]["forward_s"] for u in base if u in steps), None)
        tf = {k: v for k, v in torch_r["forward"].items() if k.startswith("forward_")}
        if zf is not None and tf:
            best = min(tf, key=tf.get)  # the faster torch forward: the stricter comparison
            res["forward_vs_torch"] = zf / tf[best]
            res["details"]["forward_vs_torch"] = {"zojax_forward_s": zf, "torch_used": best, **tf,
                                                  **{f"vs_torch_{k}": zf / v for k, v in tf.items()}}
        for m in ("lozo", "mezo"):
            if f"{m}_k1" in steps and f"{m}_k1" in torch_r["steps"]:
                res[f"speedup_vs_torch_{m}_k1"] = torch_r["steps"][f"{m}_k1"] / steps[f"{m}_k1"]["step_s"]

    def check(self) -> dict:
        out = {}
        for key, (op, bound) in DEVICE_TARGETS.items():
            v = self.results.get(key)
            if v is not None:
                out[key] = {"value": v, "target": f"{op} {bound}",
                            "met": bool(v <= bound if op == "<=" else v >= bound)}
        return out

    def table(self) -> str:
        res, seed = self.results, {f"lozo_step_s_opt13b_b{b}": s for b, s in SEED_PAPER_LOZO_S.items()}
        lines = [f"{res['gpu'].get('name') or res.get('device_kind') or 'no GPU'} "
                 f"(driver {res['gpu'].get('driver')}), {res['model']}, batch {res['batch_size']} x "
                 f"{res['seq_len']}, {res['dtype']}"
                 + ("" if res["profile"] == "device" else "; tiny shape: targets are the OPT-13B shape's"),
                 f"{'key':36s} {'value':>14s}  {'target':9s} {'':7s} reference"]
        for key, (op, bound) in DEVICE_TARGETS.items():
            v = res.get(key)
            met = "" if v is None else ("met" if res["targets"][key]["met"] else "NOT met")
            ref = f"seed paper {seed[key]:.3f} s" if key in seed else ""
            lines.append(f"{key:36s} {_fmt(key, v):>14s}  {op} {bound:<6g} {met:7s} {ref}")
        for key in DEVICE_INFO:
            lines.append(f"{key:36s} {_fmt(key, res.get(key)):>14s}")
        skipped = [n for n, u in res["units"].items() if u["status"] != "done"]
        if skipped:
            lines.append("not done: " + ", ".join(f"{n} ({res['units'][n]['status']})" for n in skipped))
        return "\n".join(lines)


def run_device(profile: str = "device", json_path: str | None = None, budget_s: float | None = None,
               peak_tflops: float | None = None, units=DEVICE_UNITS, reps: int | None = None, log=print,
               resume: str | None = None) -> dict:
    """The device suite (bench/gpu.sh): one accelerator, the OPT-13B shape (random weights) in bf16.

    * ``torch``: in a process of its own, first (both frameworks reserve the device's memory):
      HF ``OPTForCausalLM`` eager forward (sdpa, no_grad) of the 2·B sequences of a K = 1 step,
      all logits and last logit; the official-style MeZO and LoZO steps (K = 1); ``torch.normal``.
    * ``{lozo,factorized,mezo}_k{1,8}``: zojax's step against its forward of the same 2·K·B
      sequences (``inference_efficiency_*``); ``lozo_b{32,64,128}``: LoZO at larger batches
      (``lozo_step_s_opt13b_b*``; b16 is ``lozo_k1``); ``lozo_b64``'s forward (128 x 48 tokens)
      gives ``forward_mfu_b64`` over ``peak_tflops`` (default :data:`H200_BF16_PEAK_FLOPS`).
    * ``rng``: bf16 normals per second fused into a weight update (``zojax.random``) against
      ``torch.normal`` alone.
    * ``unrolled``: the forward with the layer scan against unrolled layers.
    * ``xla_options``: the forward and a LoZO K = 1 step compiled without zojax's accelerator
      defaults (:data:`zojax.accelerator.XLA_OPTIONS`) over with them (> 1: the defaults help).

    Units run in :data:`DEVICE_UNITS` order; one that would pass ``budget_s`` (seconds since the
    start, by :data:`DEVICE_ESTIMATE_S`) is skipped. The JSON is rewritten after every unit, so a
    run cut short keeps what it measured; nothing is written before the first unit is done.
    ``resume``: a previous run's JSON; its finished units are kept and not run again.
    """
    if peak_tflops is None and os.environ.get("ZOJAX_PEAK_TFLOPS"):
        peak = (float(os.environ["ZOJAX_PEAK_TFLOPS"]) * 1e12, "ZOJAX_PEAK_TFLOPS")
    elif peak_tflops is not None:
        peak = (peak_tflops * 1e12, "--peak-tflops")
    else:
        peak = (H200_BF16_PEAK_FLOPS, H200_PEAK_SOURCE)
    cache = common.enable_compilation_cache()
    prior = json.loads(Path(resume).read_text()) if resume else None
    suite = DeviceSuite(profile, json_path, budget_s, peak, reps, log, prior)
    suite.results["compilation_cache"] = cache is not None
    gpu = suite.results["gpu"]
    log(f"zojax device suite, profile {profile!r}: "
        + (f"{gpu['name']} (driver {gpu['driver']})" if gpu.get("name") else "no nvidia-smi")
        + f", budget {'none' if budget_s is None else f'{budget_s:.0f}s'}")
    res = suite.run(units)
    res["targets"] = suite.check()
    log(f"done in {res['elapsed_s']:.0f}s")
    log(suite.table())
    log(f"wrote {json_path}" if suite.write() else "nothing measured: no JSON written")
    return res


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
                    help="the OPT-13B shape in bf16 on the accelerator, against torch (what gpu.sh runs)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of {ALL}; with --device-suite, of its units {DEVICE_UNITS}")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per candidate (after warm-up)")
    ap.add_argument("--members", default=None, help="comma-separated K values for efficiency and torch (default 1,8)")
    ap.add_argument("--budget", type=float, default=None,
                    help="device suite: start no unit that would end past this many seconds (default: none)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device suite: MFU denominator (default: H200 bf16 dense 989, or ZOJAX_PEAK_TFLOPS)")
    ap.add_argument("--resume", default=None,
                    help="device suite: a previous run's JSON; keep its finished units, run the others")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.device_suite:
        return _main_device(ap, args)
    profile = "tiny" if args.tiny else ("quick" if args.quick else "full")
    only = _only(ap, args.only, ALL)
    members = tuple(int(k) for k in args.members.split(",")) if args.members else None
    run(profile, only, args.json, reps=args.reps, members=members)


def _only(ap, text: str | None, known: tuple[str, ...]) -> tuple[str, ...]:
    if text is None:
        return known
    only = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = set(only) - set(known)
    if bad:
        ap.error(f"unknown measures {sorted(bad)}; known: {known}")
    return tuple(u for u in known if u in only)  # always in the suite's own order


def _main_device(ap, args):
    if not args.tiny:
        backend = _accelerator_backend()
        if backend in ("cpu", "unknown"):
            print(f"run.py --device-suite: jax sees no accelerator (backend: {backend}); "
                  "use --tiny to check the code path on CPU", file=sys.stderr)
            sys.exit(2)
    res = run_device("device-tiny" if args.tiny else "device", args.json, budget_s=args.budget,
                     peak_tflops=args.peak_tflops, units=_only(ap, args.only, DEVICE_UNITS), reps=args.reps,
                     log=lambda *a: print(*a, flush=True), resume=args.resume)
    if res["errors"]:
        sys.exit(1)

if __name__ == "__main__":
    main()
