"""ES with generation in the step against batched generation of the same sequences.

    python bench/es_generation.py --json bench/results/es_generation.json   # K = 8, 64, 256, CPU quick profile
    python bench/es_generation.py --memory --json bench/results/es_generation_memory.json

Throughput: one fused ES step (every member and sign samples ``prompts x samples`` completions of
``new`` tokens with its rank-1 perturbation on the adapter path, a ``jnp`` reward scores them, z-score
shaping, zo_sgd update) against one batched generation of the same ``2K x prompts x samples``
sequences with the base weights (the same decode program, no perturbation, no update): the ratio is
ES's inference efficiency for generation. Interleaved medians (:func:`bench.common.side_by_side`). The
CPU quick profile (``bench/run.py --quick``): SmolLM2-135M's real weights, its first 4 layers.

Memory (``--memory``): XLA's memory analysis of the compiled programs (nothing runs) for SmolLM2-135M,
4 prompts x 32 new tokens: the largest K whose ES step fits in the batched generation's memory + 10%.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``zojax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import zojax  # noqa: E402
from bench import common  # noqa: E402
from zojax.models import stacked_paths  # noqa: E402
from zojax.scoring import Member  # noqa: E402
from zojax.tasks import generation as gen  # noqa: E402


def _reward(completions, index):
    """A jnp reward (inside the program, so the host is not what is measured)."""
    del index
    return jnp.mean((completions % 7) == 0, axis=-1).astype(jnp.float32)


def _model(layers: int | None):
    bundle = common.load("smollm2-135m", layers=layers)
    model = bundle.family.Model(bundle.config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, bundle.params)
    return bundle, graphdef, state


def _prompts(prompts: int, length: int) -> gen.PromptBatch:
    rng = np.random.default_rng(0)
    ids = rng.integers(100, 20000, size=(prompts, length)).astype(np.int32)
    return gen.PromptBatch(ids, np.ones_like(ids), np.arange(prompts, dtype=np.int32))


def es_spec(members: int, stacked: str | None, scope: str = "all", chunk_size: int | None = None) -> zojax.ZOSpec:
    """The measured ES recipe: rank-1 members on the adapter path, fresh every step, z-scored rewards."""
    return zojax.ZOSpec(noise=zojax.LowRank(rank=1, refresh_every=1, stacked=stacked), eps=1e-3, members=members,
                        scope=scope, estimator="zscore", adapter=True, chunk_size=chunk_size)


def generation_fn(graphdef, sampling: gen.Sampling):
    """``generate_all(params, tiled prompts) -> rewards``: the baseline, every row generated with the base
    weights and its own sampling key, scored by the same reward."""

    def generate_all(params, tiled):
        member = Member(jax.random.PRNGKey(0), jnp.asarray(0), jnp.asarray(0))
        keys = gen.completion_keys(member, jnp.arange(tiled.ids.shape[0]), sampling.samples)
        return _reward(gen.generate_population(graphdef, params, tiled, keys, sampling), None)

    return generate_all


def _programs(graphdef, state, batch, members: int, sampling: gen.Sampling, stacked: str | None, scope: str = "all",
              chunk_size: int | None = None):
    """(ES step thunk, generation thunk, their jitted functions and arguments for lowering)."""
    spec = es_spec(members, stacked, scope, chunk_size)
    opt = zojax.zo_sgd(1e-4)
    compiled = zojax.make_step(gen.reward_loss(graphdef, sampling, _reward), spec, opt)
    params = jax.tree.map(jnp.copy, state)
    es_state, frozen = zojax.init(params, spec, opt, jax.random.PRNGKey(0))
    holder = {"state": es_state}
    batch = jax.tree.map(jnp.asarray, batch)

    def es():
        holder["state"], info = compiled.step(holder["state"], frozen, batch)
        return info.losses

    copies = 2 * members  # every member and sign
    tiled = gen.PromptBatch(*(jnp.tile(x, (copies,) + (1,) * (x.ndim - 1)) for x in batch))
    generate_jit = zojax.accelerator.jit(generation_fn(graphdef, sampling))

    def generation():
        return generate_jit(state, tiled)

    lowering = {"es": lambda: compiled.step.lower(holder["state"], frozen, batch),
                "generation": lambda: generate_jit.lower(state, tiled)}
    return es, generation, lowering


def throughput(args) -> dict:
    bundle, graphdef, state = _model(args.layers)
    batch = _prompts(args.prompts, args.prompt_len)
    sampling = gen.Sampling(samples=args.samples, max_new_tokens=args.new_tokens, temperature=1.0)
    rows = {}
    for k in args.members:
        es, generation, _ = _programs(graphdef, state, batch, k, sampling, stacked_paths(bundle.family))
        t = common.side_by_side({"es_step": es, "generation": generation}, reps=args.reps, warmup=0, log=print)
        rows[str(k)] = {"members": k, "sequences": 2 * k * args.prompts * args.samples,
                        "es_step": t["es_step"].as_dict(), "generation": t["generation"].as_dict(),
                        "ratio": t["es_step"].median / t["generation"].median,
                        "cpu_ratio": t["es_step"].cpu_median / t["generation"].cpu_median}
        print(f"K={k}: ES step {t['es_step'].median:.3f}s, generation {t['generation'].median:.3f}s, "
              f"ratio {rows[str(k)]['ratio']:.3f} (cpu {rows[str(k)]['cpu_ratio']:.3f})", flush=True)
        common.release()
    return {"model": bundle.describe(), "prompts": args.prompts, "prompt_len": args.prompt_len,
            "samples": args.samples, "new_tokens": args.new_tokens, "by_members": rows,
            "es_over_generation_k64": rows.get("64", {}).get("ratio")}


def memory(args) -> dict:
    bundle, graphdef, state = _model(None)
    batch = _prompts(4, args.prompt_len)
    sampling = gen.Sampling(samples=1, max_new_tokens=32, temperature=1.0)
    rows = {}
    for k in args.members:
        _, _, lowering = _programs(graphdef, state, batch, k, sampling, stacked_paths(bundle.family))
        sizes = {}
        for name, lower in lowering.items():
            m = lower().compile().memory_analysis()
            sizes[name] = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
                           "temp": m.temp_size_in_bytes, "total": m.argument_size_in_bytes + m.temp_size_in_bytes
                           + m.output_size_in_bytes - m.alias_size_in_bytes}
        ratio = sizes["es"]["total"] / sizes["generation"]["total"]
        rows[str(k)] = {**sizes, "ratio": ratio}
        print(f"K={k}: ES step {sizes['es']['total'] / 2**20:.0f} MiB, generation "
              f"{sizes['generation']['total'] / 2**20:.0f} MiB, ratio {ratio:.3f}", flush=True)
        common.release()
    fits = [int(k) for k, r in rows.items() if r["ratio"] <= 1.10]
    return {"model": bundle.describe(), "prompts": 4, "new_tokens": 32, "by_members": rows,
            "largest_k_within_10_percent": max(fits) if fits else None}


def _uptime() -> str:
    """``uptime``'s line: the machine is shared, so its load goes with every figure."""
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--layers", type=int, default=4, help="SmolLM2-135M truncated to its first N layers (real weights)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="memory analysis of the compiled programs instead")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    started = time.time()
    load_before, uptime_before = os.getloadavg(), _uptime()
    out = memory(args) if args.memory else throughput(args)
    out.update(machine=common.machine(), load_before=load_before, load_after=os.getloadavg(),
               uptime_before=uptime_before, uptime_after=_uptime(), seconds=time.time() - started,
               command="python bench/es_generation.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps({k: v for k, v in out.items() if k != "by_members"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
