"""Every program zojax runs, compiled for real TPU topologies on this (CPU-only) machine.

    python bench/tpu_compile.py                          # the sweep -> bench/results/tpu_compile.json
    python bench/tpu_compile.py --topologies v5e-8 --members 1 --model tiny-opt --layers 2 --json -

jax with ``libtpu`` installed (the test extra: ``jax[tpu]``) compiles for a TPU slice without one
(``jax.experimental.topologies.get_topology_desc``, MaxText's ``train_compile.py`` route): arguments
are ``jax.ShapeDtypeStruct`` with shardings on zojax's own ``(pop, model)`` mesh (the family's
tensor-parallel rules), nothing is allocated. Per program it records whether it compiles, the HBM per
chip (arguments + temporaries + outputs - aliased, from ``memory_analysis``) and the TPU compiler's
cost model (``cost_analysis``: flops, bytes accessed, ``optimal_seconds``, per chip).

THE COST MODEL IS NOT A MEASUREMENT. It charges memory traffic and MXU work, hardly any vector ALU
work (threefry hashing is nearly free in it): it exposes memory disasters (a per-element gather),
not slow arithmetic. It counts a ``while`` body once (layers are unrolled here so every layer counts;
MeZO scores all its members at once, no ``lax.map`` loop) and takes the max over ``lax.cond``
branches: the LoZO step is compiled without its fold (``lozo``) and the fold alone (``lozo_fold``,
reported per step as fold / ``refresh_every``), and every step's finiteness check and update count
as if taken.

Programs (per topology and K): ``forward`` (the 2·K·B sequences a step scores, batch split over
``pop``), ``lozo`` (rank 2, adapter state, lora scope), ``lozo_fold``, ``factorized`` (rank 128,
lora scope, adapter path), ``mezo`` (dense Gaussian over every parameter, lazy dense).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``zojax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

# libtpu looks for a TPU VM's metadata at import; compiling for a described topology needs none
for _var, _value in (("TPU_ACCELERATOR_TYPE", "v5litepod-8"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_SKIP_MDS_QUERY", "1"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
                     ("TF_CPP_MIN_LOG_LEVEL", "3")):
    os.environ.setdefault(_var, _value)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import zojax  # noqa: E402
from zojax import parallel  # noqa: E402
from zojax.models import sharding_rules  # noqa: E402

from . import common  # noqa: E402

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice as ``get_topology_desc`` takes it (MaxText's accelerator map), with its HBM per chip."""

    topology: str
    chip_config: str
    chips_per_host: tuple[int, int, int]
    hbm_bytes: int


TOPOLOGIES: dict[str, Topology] = {
    "v5e-8": Topology("v5e:2x4", "default", (2, 2, 1), 16 * GiB),
    "v5p-8": Topology("v5:2x2x1", "megacore", (2, 2, 1), 95 * GiB),
    "v6e-8": Topology("v6e:2x4", "default", (2, 2, 1), 32 * GiB),
    "v5e-32": Topology("v5e:4x8", "default", (2, 2, 1), 16 * GiB),  # 8 hosts of 4 chips
}

PROGRAMS = ("forward", "lozo", "lozo_fold", "factorized", "mezo")

#: Targets of issue 21 (the cost model's ``optimal_seconds``, program / forward of the same sequences).
TARGETS = {"lozo": 1.05, "lozo_fold_per_step": 0.05, "factorized": 1.15, "mezo": {1: 1.5, 8: 1.8},
           "hbm_ratio": 1.10}


def tpu_available() -> str | None:
    """None when TPU programs can be compiled here, else why not (one line)."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        return f"libtpu is not installed ({e}); pip install 'jax[tpu]' (the test extra does)"
    try:
        devices(TOPOLOGIES["v5e-8"])
    except Exception as e:  # noqa: BLE001 - any failure of the topology API means no TPU compiles here
        return f"libtpu cannot describe a TPU topology here: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def devices(topo: Topology) -> list:
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(
        platform="tpu", topology_name=topo.topology, chip_config_name=topo.chip_config,
        chips_per_host_bounds=topo.chips_per_host, num_slices=1, wrap=(False, False, False)).devices)


def mesh_shape(chips: int, members: int, max_model: int = 8) -> tuple[int, int]:
    """``(pop, model)``: tensor parallelism over up to ``max_model`` chips (one host's worth), the rest
    of the slice over the population, as far as K allows (``pop`` must divide K)."""
    pop = math.gcd(members, max(1, chips // max_model))
    return pop, chips // pop


def _sds(tree, shardings):
    return jax.tree.map(lambda x, s: None if x is None else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings, is_leaf=lambda x: x is None)


def _batch_sds(batch, mesh, split_pop: bool):
    pop = parallel.pop_size(mesh)

    def one(x):
        spec = P(parallel.POP) if split_pop and x.shape[0] % pop == 0 else P()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    return jax.tree.map(one, batch)


def _no_fold(optimizer):
    """The LoZO adapter-state optimiser with its fold taken out (what a step inside a V window runs). The update
    check's exact branch still asks whether a fold would write finite values (``folded_finite``): that is the step's."""
    return optimizer._replace(fold=lambda params, state, key, step, force=False: (params, state))


def _spec(method: str, members: int) -> zojax.ZOSpec:
    base = "lozo" if method == "lozo_fold" else method
    spec = common.spec_for(base, members, chunk_size=members)
    # all members at once: a lax.map over chunks is a while loop, which cost analysis counts once
    return dataclasses.replace(spec, chunk_size=None)


def lower(method: str, bundle, batch, members: int, mesh, unroll: bool = True):
    """The lowered program ``method`` (see :data:`PROGRAMS`) for ``members`` and ``mesh``, from shapes
    (``unroll=False``: the layers under ``lax.scan``, as zojax runs them)."""
    rules = sharding_rules(bundle.family)
    loss = common.loss_fn(bundle, unroll_layers=unroll)
    params = _sds(bundle.params, parallel.param_shardings(bundle.params, mesh, rules))
    if method == "forward":
        tiled = jax.eval_shape(lambda b: common.tile(b, 2 * members), batch)
        return zojax.accelerator.jit(loss).lower(params, _batch_sds(tiled, mesh, True))
    spec = _spec(method, members)
    opt = common.optimizer(1e-7, spec)
    state, frozen = jax.eval_shape(lambda p: zojax.init(p, spec, opt, jax.random.PRNGKey(0)), bundle.params)
    state = _sds(state, parallel.state_shardings(state, mesh, rules))
    frozen = _sds(frozen, parallel.param_shardings(frozen, mesh, rules))
    if method == "lozo_fold":
        def fold(params, opt_state, key, step):
            return opt.fold(params, opt_state, key, step, force=True)

        return zojax.accelerator.jit(fold, donate_argnums=(0, 1)).lower(
            state.params, state.opt_state, state.key, state.step)
    if method == "lozo":
        opt = _no_fold(opt)
    step = zojax.make_step(loss, spec, opt, mesh=mesh, rules=rules).step
    return step.lower(state, frozen, _batch_sds(batch, mesh, False))


_COLLECTIVE = re.compile(r"= [^=]*? (all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start)?\(")


def hbm_of(compiled) -> int:
    """HBM per chip of a compiled program: arguments + temporaries + outputs - aliased (donated)."""
    m = compiled.memory_analysis()
    return (int(m.argument_size_in_bytes) + int(m.temp_size_in_bytes) + int(m.output_size_in_bytes)
            - int(m.alias_size_in_bytes))


def cost_of(compiled) -> dict:
    """The cost model's figures of a compiled program (one dict, whatever jax returns)."""
    cost = compiled.cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def analyse(compiled, hbm_bytes: int) -> dict:
    """HBM per chip and the cost model's figures of a compiled program.

    The model prices some collectives (large all-reduces between chips) at exactly -1 s: it does not
    price that communication. ``optimal_seconds`` here is the rest, the raw sum plus one second per
    such sentinel (``sentinels``, inferred as ``ceil(-raw)`` when the raw sum is negative, which holds
    while the real figure is below 1 s, true of every program here; ``collectives`` counts the
    collective ops of the optimised program, an upper bound on the sentinels)."""
    m = compiled.memory_analysis()
    hbm = hbm_of(compiled)
    cost = cost_of(compiled)
    raw = float(cost.get("optimal_seconds", 0.0))
    sentinels = math.ceil(-raw) if raw < 0 else 0
    collectives = len(_COLLECTIVE.findall(compiled.as_text()))
    seconds = raw + sentinels
    return {"compiles": True, "hbm_bytes": hbm, "hbm_fraction": hbm / hbm_bytes,
            "argument_bytes": int(m.argument_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
            "flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "optimal_seconds": seconds, "optimal_ms": seconds * 1e3, "hbm_gib": hbm / GiB,
            "bytes_accessed_gb": float(cost.get("bytes accessed", 0.0)) / 1e9,
            "optimal_seconds_raw": raw, "sentinels": sentinels,
            "collectives": collectives}


def compile_one(method: str, bundle, batch, members: int, mesh, hbm_bytes: int, full=None) -> dict:
    """One program's row; with ``full`` (the bundle at the model's real depth) also its HBM per chip
    at that depth, compiled with the layers scanned (``hbm_bytes_full_depth``)."""
    t0 = time.perf_counter()
    try:
        row = analyse(lower(method, bundle, batch, members, mesh).compile(), hbm_bytes)
        if full is not None:
            # memory analysis is exact for a scan (the cost model is not: it counts a loop body once), and the
            # unrolled few-layer program overstates the HBM ratio (a layer's temporaries against few layers' weights)
            row["hbm_bytes_full_depth"] = hbm_of(lower(method, full, batch, members, mesh, unroll=False).compile())
            row["hbm_fraction_full_depth"] = row["hbm_bytes_full_depth"] / hbm_bytes
            row["hbm_gib_full_depth"] = row["hbm_bytes_full_depth"] / GiB
    except Exception as e:  # noqa: BLE001 - a program that does not compile is a result, recorded
        row = {"compiles": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    return row


def ratios(rows: dict, refresh_every: int) -> dict:
    """Each program's ``optimal_seconds`` and HBM over the forward's (the fold per step: / refresh_every)."""
    fwd = rows.get("forward", {})
    out = {}
    if not fwd.get("compiles"):
        return out
    for name, row in rows.items():
        if name == "forward" or not row.get("compiles"):
            continue
        t = row["optimal_seconds"] / fwd["optimal_seconds"]
        if name == "lozo_fold":
            out["lozo_fold_per_step"] = t / refresh_every
        else:
            out[name] = t
            out[f"{name}_hbm"] = row["hbm_bytes"] / fwd["hbm_bytes"]
            if "hbm_bytes_full_depth" in row and "hbm_bytes_full_depth" in fwd:
                out[f"{name}_hbm_full_depth"] = row["hbm_bytes_full_depth"] / fwd["hbm_bytes_full_depth"]
    return out


def abstract_bundle(model: str, layers: int, **config) -> common.Bundle:
    """A bf16 bundle of shapes only: a :data:`bench.common.SHAPES` model, ``layers`` deep, ``config``
    fields replaced (the CI test's wide two-layer model)."""
    family, base = common.SHAPES[model]
    base = dataclasses.replace(base, num_hidden_layers=layers, **config)
    abstract = nnx.eval_shape(lambda: family.Model(base, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    return common.Bundle(model, family, base, params, jnp.bfloat16)


def compile_programs(bundle, topology: str, members: int, programs=PROGRAMS, batch_size: int = 16,
                     seq_len: int = 48, log=print, full=None) -> dict:
    """One topology and K: the mesh, each program's row and the ratios to the forward (``full``: the
    bundle at full depth, for each program's HBM there; the fold is skipped, it runs per leaf)."""
    topo = TOPOLOGIES[topology]
    devs = devices(topo)
    batch = jax.eval_shape(lambda: common.make_batch(bundle, batch_size, seq_len))
    pop, model_axis = mesh_shape(len(devs), members)
    mesh = parallel.make_mesh(pop, model_axis, devs)
    rows = {}
    for method in programs:
        rows[method] = r = compile_one(method, bundle, batch, members, mesh, topo.hbm_bytes,
                                       None if method == "lozo_fold" else full)
        deep = f", {r['hbm_bytes_full_depth'] / GiB:.2f} GiB/chip at full depth" if "hbm_bytes_full_depth" in r else ""
        log(f"  {topology} K={members} mesh {pop}x{model_axis} {method}: "
            + (f"{r['optimal_seconds'] * 1e3:.3f} ms, {r['hbm_bytes'] / GiB:.2f} GiB/chip{deep}"
               if r["compiles"] else r["error"]) + f" ({r['compile_s']} s)")
    refresh_every = common.spec_for("lozo", 1).noise.refresh_every
    jax.clear_caches()
    return {"mesh": {"pop": pop, "model": model_axis}, "programs": rows, "ratios": ratios(rows, refresh_every)}


def sweep(model: str, layers: int, topologies, members, programs=PROGRAMS, batch_size: int = 16,
          seq_len: int = 48, log=print, full_depth: bool = False) -> dict:
    bundle = abstract_bundle(model, layers)
    full = abstract_bundle(model, common.SHAPES[model][1].num_hidden_layers) if full_depth else None
    refresh_every = common.spec_for("lozo", 1).noise.refresh_every
    out = {"model": f"{model} shape, {bundle.config.num_hidden_layers} layers unrolled, bf16 weights and compute",
           "batch_size": batch_size, "seq_len": seq_len, "refresh_every": refresh_every, "topologies": {}}
    for name in topologies:
        devs = devices(TOPOLOGIES[name])
        per_k = {str(k): compile_programs(bundle, name, k, programs, batch_size, seq_len, log, full) for k in members}
        out["topologies"][name] = {"chips": len(devs), "hosts": len({d.process_index for d in devs}),
                                   "device_kind": devs[0].device_kind,
                                   "hbm_per_chip_bytes": TOPOLOGIES[name].hbm_bytes,
                                   "by_k": per_k}
    return out


def table(res: dict) -> str:
    """The README table; HBM cells read ``unrolled (full depth)`` where the full-depth figure exists."""
    lines = ["| slice | K | mesh | forward ms | LoZO | fold/refresh | factorized | MeZO | LoZO HBM | MeZO HBM "
             "| forward GiB/chip |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in res["topologies"].items():
        for k, row in t["by_k"].items():
            r, fwd = row["ratios"], row["programs"]["forward"]
            ran = row["programs"]

            def f(key, r=r, ran=ran):
                program = key.removesuffix("_hbm").removesuffix("_per_step")
                if key not in r:
                    return "fails" if program in ran else "not run"
                deep = f" ({r[key + '_full_depth']:.3f})" if key + "_full_depth" in r else ""
                return f"{r[key]:.3f}{deep}"

            fwd_ms = f"{fwd['optimal_ms']:.2f}" if fwd.get("compiles") else "fails"
            fwd_gib = f"{fwd['hbm_gib']:.2f}" if fwd.get("compiles") else "-"
            if "hbm_gib_full_depth" in fwd:
                fwd_gib += f" ({fwd['hbm_gib_full_depth']:.2f})"
            lines.append(f"| {name} | {k} | {row['mesh']['pop']}x{row['mesh']['model']} | {fwd_ms} | {f('lozo')} "
                         f"| {f('lozo_fold_per_step')} | {f('factorized')} | {f('mezo')} | {f('lozo_hbm')} "
                         f"| {f('mezo_hbm')} | {fwd_gib} |")
    return "\n".join(lines)


def generator_programs() -> dict:
    """``w + 1e-3 z`` on one OPT-13B MLP kernel (5120 x 20480, bf16) for each way of drawing ``z``:
    the baseline a plain pass over the weight costs, and the ways zojax's generator can compute."""
    from zojax import random as zr

    bf16 = jnp.bfloat16

    def raw16(key, shape, draw):
        # the 16-bit lanes as zojax.random draws them, turned into normals by ``draw``
        width = 16
        shape, lead, row, row_shape = zr._layout(shape)
        return draw(zr._bits(zr.key_words(key), width, shape, lead, row, row_shape, "elementwise"), bf16)

    return {
        "copy (w * 1)": lambda key, w: w * jnp.ones((), w.dtype),
        "jax.random.normal": lambda key, w: w + 1e-3 * jax.random.normal(key, w.shape, bf16),
        "zojax.random.normal, float32": lambda key, w: (
            w.astype(jnp.float32) + 1e-3 * zr.normal(key, w.shape, jnp.float32)).astype(bf16),
        "zojax.random.normal, bf16, table gather (the CPU's way)": lambda key, w: (
            w + 1e-3 * raw16(key, w.shape, zr._lookup16)),
        "zojax.random.normal, bf16 (computed: every backend but the CPU)": lambda key, w: (
            w + 1e-3 * zr.normal(key, w.shape, bf16)),
        "zojax.random.rademacher, hashes buffered (the CPU's way)": lambda key, w: (
            w + 1e-3 * zr.rademacher(key, w.shape, bf16, strategy="buffered")),
        "zojax.random.rademacher (elementwise: every backend but the CPU)": lambda key, w: (
            w + 1e-3 * zr.rademacher(key, w.shape, bf16, strategy="elementwise")),
    }


def generator(topology: str = "v5p-8", shape=(5120, 20480)) -> dict:
    """The dense generator alone, compiled for one chip of ``topology``: per way of drawing ``z``,
    the cost model's ``optimal_seconds`` and bytes accessed (docs/benchmarks-tpu.md's first table)."""
    dev = devices(TOPOLOGIES[topology])[0]
    sharding = jax.sharding.SingleDeviceSharding(dev)
    w = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=sharding)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding)
    rows = {}
    for name, fn in generator_programs().items():
        cost = cost_of(jax.jit(fn).lower(key, w).compile())
        rows[name] = {"optimal_ms": float(cost.get("optimal_seconds", 0.0)) * 1e3,
                      "bytes_accessed_gb": float(cost.get("bytes accessed", 0.0)) / 1e9}
        print(f"  {name}: {rows[name]['optimal_ms']:.3f} ms, {rows[name]['bytes_accessed_gb']:.2f} GB", flush=True)
    return {"chip": f"one chip of {topology} ({dev.device_kind})", "shape": list(shape), "dtype": "bfloat16",
            "what": "the TPU compiler's cost model (libtpu, compiled on a CPU host), not a measurement",
            "jax": jax.__version__, "libtpu": importlib.metadata.version("libtpu"), "programs": rows}


def es_programs(topology: str, members: int, *, layers: int = 30, prompts: int = 4, prompt_len: int = 16,
                new_tokens: int = 32, log=print) -> dict:
    """Reward fine-tuning's two programs at SmolLM2-135M's shape (bf16) on ``topology``, the population over
    every chip (``pop`` axis; its 9 heads do not split 8 ways): ``es_step``, sampling inside the population
    program (rank-1 members on the adapter path, a ``jnp`` reward, z-scored), and ``generation``, the same
    ``2 K x prompts`` sequences generated with the base weights. Both decode in a ``lax.scan``, which the
    cost model counts once: their ``optimal_seconds`` are prefill plus one decode step, comparable with each
    other, not whole-run figures; HBM per chip is exact."""
    from bench import es_generation
    from zojax.models import stacked_paths
    from zojax.tasks import generation as gen

    topo = TOPOLOGIES[topology]
    devs = devices(topo)
    family, config = common.SHAPES["smollm2-135m-shape"]
    config = dataclasses.replace(config, num_hidden_layers=layers)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: family.Model(config, param_dtype=jnp.bfloat16,
                                                                     rngs=nnx.Rngs(0))))
    pop = math.gcd(members, len(devs))
    mesh = parallel.make_mesh(pop, len(devs) // pop, devs)
    replicated = NamedSharding(mesh, P())
    sds = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)
    sampling = gen.Sampling(samples=1, max_new_tokens=new_tokens, temperature=1.0, eos=(2,), pad=2)
    ids = jax.ShapeDtypeStruct((prompts, prompt_len), jnp.int32, sharding=replicated)
    batch = gen.PromptBatch(ids, ids, jax.ShapeDtypeStruct((prompts,), jnp.int32, sharding=replicated))
    spec = es_generation.es_spec(members, stacked_paths(family))
    opt = zojax.zo_sgd(1e-4)
    es_state, frozen = jax.eval_shape(lambda p: zojax.init(p, spec, opt, jax.random.PRNGKey(0)), state)
    step = zojax.make_step(gen.reward_loss(graphdef, sampling, es_generation._reward), spec, opt, mesh=mesh).step
    rows_sharded = NamedSharding(mesh, P(parallel.POP))
    n = 2 * members * prompts
    tiled = gen.PromptBatch(*(jax.ShapeDtypeStruct((n,) + x.shape[1:], x.dtype, sharding=rows_sharded) for x in batch))
    generate_all = es_generation.generation_fn(graphdef, sampling)
    lowering = {"generation": lambda: zojax.accelerator.jit(generate_all).lower(sds(state), tiled),
                "es_step": lambda: step.lower(sds(es_state), sds(frozen), batch)}
    rows = {}
    for name, lower_program in lowering.items():
        t0 = time.perf_counter()
        try:
            rows[name] = analyse(lower_program().compile(), topo.hbm_bytes)
        except Exception as e:  # noqa: BLE001 - a program that does not compile is a result, recorded
            rows[name] = {"compiles": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        rows[name]["compile_s"] = round(time.perf_counter() - t0, 2)
        r = rows[name]
        log(f"  {topology} K={members} mesh {pop}x{len(devs) // pop} {name}: "
            + (f"{r['optimal_ms']:.3f} ms, {r['hbm_gib']:.3f} GiB/chip" if r["compiles"] else r["error"])
            + f" ({r['compile_s']} s)")
    out = {"mesh": {"pop": pop, "model": len(devs) // pop}, "sequences": n, "programs": rows}
    if all(r["compiles"] for r in rows.values()):
        gen_row, es_row = rows["generation"], rows["es_step"]
        out["es_over_generation"] = {"optimal_seconds": es_row["optimal_seconds"] / gen_row["optimal_seconds"],
                                     "hbm": es_row["hbm_bytes"] / gen_row["hbm_bytes"]}
    jax.clear_caches()
    return out


def merge(runs: list[dict]) -> dict:
    """Several runs' results as one: slices and K values combined, wall times summed, load averages
    listed; rows written before ``optimal_ms`` / ``hbm_gib`` existed get them."""
    out = dict(runs[0], topologies={}, wall_s=0.0, loadavg_start=[], loadavg_end=[])
    for run in runs:
        out["wall_s"] += run["wall_s"]
        out["loadavg_start"].append(run.get("loadavg_start"))
        out["loadavg_end"].append(run.get("loadavg_end"))
        for name, t in run["topologies"].items():
            out["topologies"].setdefault(name, dict(t, by_k={}))["by_k"].update(t["by_k"])
            for row in (r for k in t["by_k"].values() for r in k["programs"].values() if r.get("compiles")):
                row.setdefault("optimal_ms", row["optimal_seconds"] * 1e3)
                row.setdefault("hbm_gib", row["hbm_bytes"] / GiB)
    return out


def _load() -> list[str] | None:
    """The 1, 5 and 15 minute load averages (compile times depend on them; the cost model does not)."""
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().split()[:3]
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="opt-13b")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES))
    ap.add_argument("--members", default="1,8")
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--full-depth", action="store_true",
                    help="also compile each program at the model's real depth, layers scanned, for its HBM per chip")
    ap.add_argument("--json", default="bench/results/tpu_compile.json", help="'-' prints it")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine the results of several runs (one per slice, say) into --json; compiles nothing")
    ap.add_argument("--es", action="store_true",
                    help="reward fine-tuning's ES step and batched generation, SmolLM2-135M's shape, at --members "
                    "(-> bench/results/tpu_es.json unless --json)")
    ap.add_argument("--generator", action="store_true",
                    help="the dense generator alone on one chip (-> bench/results/tpu_generator.json unless --json)")
    args = ap.parse_args(argv)
    if args.generator:
        why = tpu_available()
        if why:
            sys.exit(f"tpu_compile: {why}")
        out = "bench/results/tpu_generator.json" if args.json == ap.get_default("json") else args.json
        text = json.dumps(generator(), indent=1)
        print(text) if out == "-" else Path(out).write_text(text + "\n")
        return
    if args.es:
        why = tpu_available()
        if why:
            sys.exit(f"tpu_compile: {why}")
        t0, load = time.perf_counter(), _load()
        res = {"model": "smollm2-135m shape, 30 layers (scanned), bf16; 4 prompts of 16 tokens, 32 new tokens",
               "what": "the TPU compiler's cost model and memory analysis (libtpu, compiled on a CPU host), "
                       "not a measurement; a decode scan is counted once",
               "jax": jax.__version__, "topologies": {}}
        for name in args.topologies.split(","):
            res["topologies"][name] = {str(k): es_programs(name, k) for k in map(int, args.members.split(","))}
        res.update(wall_s=round(time.perf_counter() - t0, 1), loadavg_start=load, loadavg_end=_load())
        out = "bench/results/tpu_es.json" if args.json == ap.get_default("json") else args.json
        text = json.dumps(res, indent=1)
        print(text) if out == "-" else Path(out).write_text(text + "\n")
        return
    if args.merge:
        res = merge([json.loads(Path(f).read_text()) for f in args.merge])
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
        print(table(res))
        return
    why = tpu_available()
    if why:
        sys.exit(f"tpu_compile: {why}")
    t0 = time.perf_counter()
    load = _load()
    res = sweep(args.model, args.layers, args.topologies.split(","), [int(k) for k in args.members.split(",")],
                tuple(args.programs.split(",")), full_depth=args.full_depth)
    res.update({"what": "the TPU compiler's cost model and memory analysis (libtpu, compiled on a CPU host), "
                        "not a measurement", "jax": jax.__version__, "targets": TARGETS,
                "wall_s": round(time.perf_counter() - t0, 1), "loadavg_start": load, "loadavg_end": _load()})
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        res["libtpu"] = importlib.metadata.version("libtpu")
    text = json.dumps(res, indent=1)
    if args.json == "-":
        print(text)
    else:
        Path(args.json).write_text(text + "\n")
    print(table(res))
    print(f"wall {res['wall_s']} s")


if __name__ == "__main__":
    main()
