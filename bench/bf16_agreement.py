"""The default recipe under bfloat16 against float32: are the coefficients the same signal? (issue 21)

Runs the default recipe's compiled step, as the trainer runs it (same batches: ``tasks.train_batches`` of
(data seed, step); same seed, directions and state), for ``--steps`` steps, and reports two comparisons:

* **free**: a float32 run and a bfloat16 run, each on its own trajectory (what two ``zojax train`` commands
  differing only in ``model.dtype`` log): the target of issue 21, sign agreement >= 90% over 40 steps;
* **teacher-forced**: at every step of the float32 run, the same state, batch and direction scored by the
  bfloat16 step too, so the two coefficients differ only by the forward's dtype, not by where the runs drifted.

For each, the sign agreement, the correlation, and the agreement on the steps whose float32 coefficient is
above the median in size (a small coefficient is a directional derivative near 0: its sign is the least
certain). ``--accuracy`` also runs the whole default recipe under both dtypes and reports the test accuracy
(slow: two full runs). Writes ``bench/results/bf16_default.json`` with the load (``uptime``)::

    python bench/bf16_agreement.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from zojax import tasks
from zojax.config import load_config
from zojax.optim import init
from zojax.run import build_run

RESULTS = Path(__file__).resolve().parent / "results"
# the default recipe, on a smaller train split (the coefficients do not depend on the dev and test splits)
SMALL = ["task.num_train=200", "task.num_dev=8", "task.num_test=8"]


def load() -> str:
    """The load average, as ``uptime`` reports it."""
    return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Sign agreement, correlation and agreement where ``reference`` is above its median in size."""
    big = np.abs(reference) > np.median(np.abs(reference))
    same = np.sign(reference) == np.sign(other)
    return {
        "nonzero_fraction": float(np.mean(other != 0)),
        "sign_agreement_with_float32": float(np.mean(same)),
        "sign_agreement_where_float32_coefficient_above_median": float(np.mean(same[big])),
        "correlation": float(np.corrcoef(reference, other)[0, 1]),
        "disagreeing_steps": [int(i) for i in np.flatnonzero(~same)],
    }


def _run(dtype: str, steps: int, extra: list[str]):
    cfg = load_config(None, [*SMALL, f"model.dtype={dtype}", f"train.steps={steps}", *extra])
    run = build_run(cfg)
    state, frozen = init(jax.tree.map(jnp.copy, run.params), run.spec, run.optimizer, jax.random.PRNGKey(cfg.train.seed))
    return cfg, run, state, frozen


def _batches(run, cfg, step: int, n: int):
    return tasks.train_batches(run.train_set, cfg.task.data_seed, step, n, cfg.train.batch_size,
                               seq_len=run.train_set.seq_len)


def free(dtype: str, steps: int, extra: list[str]) -> np.ndarray:
    """The coefficients of ``steps`` steps on the run's own trajectory, ``train.steps_per_call`` at a time."""
    cfg, run, state, frozen = _run(dtype, steps, extra)
    per_call, out = cfg.train.steps_per_call, []
    for start in range(0, steps, per_call):
        n = min(per_call, steps - start)
        state, info = run.compiled.run_steps(state, frozen, _batches(run, cfg, start, n))
        out.append(np.asarray(info.coeffs)[:, 0])
    return np.concatenate(out)


def teacher_forced(steps: int, extra: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32's coefficients, bfloat16's at float32's states, and both dtypes' losses ``L(theta + eps z)``
    (``(steps, 2)``), one step at a time. The two runs share the float32-stored weights, so the states are interchangeable."""
    cfg, run32, state, frozen = _run("float32", steps, extra)
    _, run16, _, _ = _run("bfloat16", steps, extra)
    c32, c16, losses = [], [], []
    for t in range(steps):
        batch = _batches(run32, cfg, t, 1)
        _, info16 = run16.compiled.run_steps(jax.tree.map(jnp.copy, state), frozen, batch)
        state, info32 = run32.compiled.run_steps(state, frozen, batch)
        c32.append(float(np.asarray(info32.coeffs)[0, 0]))
        c16.append(float(np.asarray(info16.coeffs)[0, 0]))
        losses.append([float(np.asarray(info.losses).reshape(-1)[0]) for info in (info32, info16)])
    return np.array(c32), np.array(c16), np.array(losses)


def accuracy(dtype: str, out_dir: Path) -> dict:
    """The whole default recipe under ``dtype``: zero-shot and final test accuracy."""
    from zojax.train import train

    cfg = load_config(None, [f"model.dtype={dtype}", f"train.output_dir={out_dir / dtype}", "train.progress=false",
                             "train.tensorboard=false"])
    summary = train(cfg, echo=lambda *a, **k: None)
    return {k: summary[k] for k in ("zero_shot_accuracy", "final_accuracy", "final_loss", "wall_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--accuracy", type=Path, default=None, metavar="DIR",
                        help="also run the whole default recipe under both dtypes into DIR")
    parser.add_argument("--json", type=Path, default=RESULTS / "bf16_default.json")
    parser.add_argument("overrides", nargs="*", help="config overrides applied to both dtypes")
    args = parser.parse_args()

    started, load_before = time.time(), load()
    f32, bf16 = free("float32", args.steps, args.overrides), free("bfloat16", args.steps, args.overrides)
    tf32, tf16, tf_losses = teacher_forced(args.steps, args.overrides)
    result = {
        "what": f"Default recipe (MeZO K=1 on SmolLM2-135M-Instruct's final norm scales, eps 1e-3, lr 3e-2, batch 16, "
                f"max_length 48) for {args.steps} steps on the CPU, model.dtype=bfloat16 against float32, same seeds "
                f"({' '.join(SMALL)}: the coefficients do not depend on the dev and test splits). Coefficients read "
                "from the compiled step, as the trainer runs it. free: each dtype on its own trajectory; "
                "teacher_forced: bfloat16 scores float32's state at every step (same weights, batch and direction).",
        "command": "python bench/bf16_agreement.py --steps " + str(args.steps) + (" --accuracy DIR" if args.accuracy else "")
                   + "".join(" " + o for o in args.overrides),
        "load": f"{load_before} at the start, {load()} at the end (2-core machine, shared)",
        "steps": args.steps,
        "free": {**agreement(f32, bf16), "float32_coeffs": [round(float(c), 4) for c in f32],
                 "bfloat16_coeffs": [round(float(c), 4) for c in bf16]},
        "teacher_forced": {**agreement(tf32, tf16), "float32_coeffs": [round(float(c), 4) for c in tf32],
                           "bfloat16_coeffs": [round(float(c), 4) for c in tf16],
                           "loss_plus_float32": [round(float(x), 5) for x in tf_losses[:, 0]],
                           "loss_plus_bfloat16": [round(float(x), 5) for x in tf_losses[:, 1]]},
    }
    if args.accuracy is not None:
        result["accuracy"] = {dtype: accuracy(dtype, args.accuracy) for dtype in ("float32", "bfloat16")}
    result["wall_seconds"] = round(time.time() - started, 1)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("load", "wall_seconds")}))
    for name in ("free", "teacher_forced"):
        print(name, {k: v for k, v in result[name].items() if not k.endswith(("coeffs", "float32", "bfloat16"))})


if __name__ == "__main__":
    main()
