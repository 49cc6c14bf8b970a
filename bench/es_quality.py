"""Held-out accuracy of ES on rewards of generated text against zero-shot and k-shot prompting.

    python bench/es_quality.py --time                          # the ES step's wall and CPU time (no training)
    python bench/es_quality.py --steps 20 --json bench/results/es_quality.json

Everything is measured the same way, on the same test prompts of a bundled reward config
(``es_arithmetic``: SmolLM2-135M-Instruct, two-digit + and -): one greedy completion per prompt, the
config's reward, accuracy = the share of completions the verifier accepts. Zero-shot is the untrained
model (the trainer's own step-0 evaluation); k-shot prepends ``k`` solved training examples to every
test prompt (``task.icl_examples=k``); ES trains ``--steps`` steps (``zojax train``) and evaluates the
trained weights. Overrides (``key=value``) apply to all three. Every figure is given on the dev split
(which chooses a recipe) and the test split (which is reported).

``--time`` compiles the fused step and times one warm call of ``train.steps_per_call`` steps (wall and
process CPU), from which the number of steps that fit in a wall budget is derived.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``zojax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from zojax import accelerator  # noqa: E402
from zojax.config import load_config  # noqa: E402
from zojax.models import from_pretrained  # noqa: E402
from zojax.optim import init  # noqa: E402
from zojax.run import build_run, evaluate, trained_params  # noqa: E402
from zojax.run import reward as reward_task  # noqa: E402
from zojax.train import train  # noqa: E402

SPLITS = ("dev", "test")


def _uptime() -> str:
    import subprocess

    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _load(cfg):
    import jax.numpy as jnp

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
    return from_pretrained(cfg.model.name, dtype=dtype[accelerator.resolve_dtype(cfg.model.dtype)],
                           param_dtype=dtype[cfg.model.param_dtype])


def step_time(cfg, model) -> dict:
    """Wall and process-CPU seconds per step of one warm fused call (after the compiling one)."""
    run = build_run(cfg, model=model)
    state, frozen = init(jax.tree.map(np.copy, run.params), run.spec, run.optimizer, jax.random.PRNGKey(0))
    n = cfg.train.steps_per_call
    out = {"steps_per_call": n}
    for name, first in (("first_call", 0), ("warm_call", n)):
        batches = reward_task.train_batches(run.reward.train_set, cfg.task.data_seed, first, n, cfg.train.batch_size)
        c0, t0 = time.process_time(), time.perf_counter()
        state, info = run.compiled.run_steps(state, frozen, batches)
        jax.block_until_ready(info.losses)
        out[name] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        print(f"{name}: {out[name]['wall_s']:.1f}s wall, {out[name]['cpu_s']:.1f}s CPU for {n} steps", flush=True)
    out["wall_per_step_s"] = out["warm_call"]["wall_s"] / n
    out["cpu_per_step_s"] = out["warm_call"]["cpu_s"] / n
    return out


def quality(cfg, model, shots: list[int]) -> dict:
    """Zero-shot, k-shot and ES accuracy and mean reward on the dev and the test prompts (dev chooses a
    recipe, test is what is reported)."""
    out: dict = {"k_shot": {}}
    for k in shots:
        run = build_run(cfg.model_copy(update={"task": cfg.task.model_copy(update={"icl_examples": k})}), model=model)
        out["k_shot"][str(k)] = {split: evaluate(run, run.params, split) for split in SPLITS}
        print(f"{k}-shot: {out['k_shot'][str(k)]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        es_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": str(Path(tmp) / "run")})})
        c0, t0 = time.process_time(), time.perf_counter()
        summary = train(es_cfg, model=model)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        run = build_run(es_cfg, model=model)
        params, step = trained_params(run, Path(tmp) / "run")
        # the trainer evaluated test (step 0 and the end); dev is evaluated here, the same way
        zero = {"dev": evaluate(run, run.params, "dev"),
                "test": {"accuracy": summary["zero_shot_accuracy"], "reward": summary["zero_shot_reward"]}}
        trained = {"dev": evaluate(run, params, "dev"),
                   "test": {"accuracy": summary["final_accuracy"], "reward": summary["final_reward"]}}
    calls = [r for r in records if r.get("kind") == "train"]
    out["zero_shot"] = zero
    out["es"] = {**trained, "steps": step, "train_seconds": summary["train_seconds"],
                 "wall_seconds_with_evals": wall, "process_cpu_seconds_with_evals": cpu,
                 # the first call compiles; the others are the step's cost under the run's load
                 "seconds_per_step_by_call": [1.0 / r["steps_per_second"] for r in calls],
                 "reward_mean_by_call": [r["reward_mean"] for r in calls],
                 "reward_centre_by_call": [r["reward_centre"] for r in calls]}
    print(f"zero-shot: {zero}\nES after {step} steps: {trained}", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="config overrides key=value (all of zero-shot, k-shot and ES)")
    p.add_argument("--config", default="es_arithmetic")
    p.add_argument("--steps", type=int, default=None, help="ES steps (default: the config's train.steps)")
    p.add_argument("--shots", type=int, nargs="*", default=[4], help="k of the k-shot baselines")
    p.add_argument("--time", action="store_true", help="only time the ES step")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps is not None else [])
    cfg = load_config(args.config, overrides + ["train.progress=false", "train.eval_every=0"])
    started = time.time()
    load_before, uptime_before = os.getloadavg(), _uptime()
    model = _load(cfg)
    out = {"config": args.config, "overrides": overrides}
    out.update(step_time(cfg, model) if args.time else quality(cfg, model, args.shots))
    out.update(effective_config=cfg.model_dump(mode="json"), machine=common.machine(), load_before=load_before,
               load_after=os.getloadavg(), uptime_before=uptime_before, uptime_after=_uptime(),
               seconds=time.time() - started,
               command="python bench/es_quality.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print(json.dumps({k: v for k, v in out.items() if k not in ("effective_config", "machine")}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
