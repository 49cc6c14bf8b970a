"""Fine-tuning quality at an equal CPU-time budget: zero-shot, in-context learning, ZO rows and first-order rows.

The offline task of ``zojax train`` (SmolLM2-135M-Instruct, Rotten Tomatoes split by movie, MeZO protocol
1000 train / 500 dev / 1000 test, every test review), one model load, one row after another::

    python bench/quality.py --sweep                    # learning rates on dev (short budget) -> quality_sweep.json
    python bench/quality.py --budget 240               # the table -> bench/results/quality.json + quality.png

Every trainable row gets the same budget of *process CPU seconds* spent in training calls
(``time.process_time()``, all threads): on a machine shared with other jobs, wall time measures the
neighbours as much as the method, while CPU time is what the method consumed. Compilation (done ahead of
time, ``lower().compile()``) and evaluations are outside the budget and reported apart, with wall seconds
and the load average. Dev accuracy is measured at 0, 1/3, 2/3 and all of the budget (the curves); test
accuracy once, at the end. Learning rates come from ``--sweep`` (dev only) or the documented priors below;
test reviews are never used for a choice.

The loop is the trainer's (same batches: ``tasks.train_batches`` of (data seed, step); same state, steps and
evaluation) cut by a CPU-time budget instead of a step count, which ``zojax train`` does not offer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (overrides of the default config, learning rates swept on dev; the first is the prior)
ROWS: dict[str, tuple[list[str], list[float]]] = {
    # today's default: MeZO on the final RMSNorm scale (lr 3e-2 chosen when the default was tuned)
    "mezo_norm": (["zo.method=mezo", "zo.scope=^norm/"], [3e-2, 6e-2]),
    # AdamW 1e-5: PyTorch AdamW at 1e-5 on this split took the test reviews from 58.4% to 85.1% in 138 steps
    "fo_adamw_all": (["zo.method=fo", "zo.scope=all"], [1e-5, 3e-5]),
    "fo_adamw_lora": (["zo.method=fo", "zo.scope=lora"], [1e-5, 3e-5]),
    # ZO-SGD on ~10^8 parameters: 1e-5 is the top of MeZO's range for sub-billion models (RoBERTa-large:
    # 1e-7..1e-5); a larger rate only adds variance at d ~ 10^8 (progress per step falls like 1/d)
    "lozo_lora_k1": (["zo.method=lozo", "zo.scope=lora", "zo.members=1"], [1e-5, 1e-6, 1e-4]),
    "mezo_all_lazy": (["zo.method=mezo", "zo.scope=all", "zo.lazy_dense=true"], [1e-5, 1e-6, 1e-4]),
    # K=4 averages four coefficients: same lr scale as K=1 (taken from its sweep)
    "lozo_lora_k4": (["zo.method=lozo", "zo.scope=lora", "zo.members=4"], []),
    # MeZO-like marginal variance through the low-rank path (rank 8: U V^T / sqrt(8)); LoZO's lr scale
    "factorized_lora": (["zo.method=factorized", "zo.scope=lora", "zo.rank=8"], []),
    # LoZO with the official factored momentum (beta 0.9)
    "lozo_m_lora": (["zo.method=lozo", "zo.scope=lora", "optim.name=lozo_m"], []),
    # Ways to lift MeZO on the final norm past its ~70-72% dev plateau (explored on all 500 dev reviews:
    # --sweep --dev-limit 0). First-order AdamW on the same 576 scales is the ceiling to aim at.
    "fo_adamw_norm": (["zo.method=fo", "zo.scope=^norm/"], [1e-2, 3e-3]),
    # Adam on the densified ZO estimate (MeZO-Adam)
    "mezo_norm_adam": (["zo.method=mezo", "zo.scope=^norm/", "optim.name=adam"], [1e-2, 3e-3]),
    # more directions per forward: one-sided K = 4 scores 5 states for 4 directions (two-sided K = 1: 2 for 1)
    "mezo_norm_one_k4": (["zo.method=mezo", "zo.scope=^norm/", "zo.sided=one", "zo.members=4"], [6e-2, 1.2e-1]),
    # the trunk below the final norm is shared by every member (vmap leaves it unbatched), so K = 16 costs ~1.25x K = 1
    "mezo_norm_k16": (["zo.method=mezo", "zo.scope=^norm/", "zo.members=16"], [3e-2, 1e-1]),
    "mezo_norm_k16_adam": (["zo.method=mezo", "zo.scope=^norm/", "zo.members=16", "optim.name=adam"], [1e-2]),
    "mezo_norm_k64_adam": (["zo.method=mezo", "zo.scope=^norm/", "zo.members=64", "optim.name=adam"], [1e-2]),
    # every RMSNorm scale (61 x 576): more capacity, 61x the dimensions, and no shared trunk
    "mezo_norms_all": (["zo.method=mezo", "zo.scope=norm"], [3e-3, 1e-2]),
    # Past MeZO's plateau (issue 25, docs/optimisers.md). FZOO: K = 4 one-sided Rademacher members, a step of
    # fixed size (lr / std of the K losses); its lr is in parameter units, not MeZO's
    "fzoo_norm": (["zo.method=fzoo", "zo.scope=^norm/", "zo.members=4"], [1e-1, 3e-2]),
    # HiZOO: H starts at 1 (MeZO's lr scale) and grows towards the curvature; alpha 1e-2, the paper's largest
    "hizoo_norm": (["zo.method=hizoo", "zo.scope=^norm/", "optim.hessian_smooth=1e-2"], [3e-2, 1e-1]),
    # Sparse MeZO: the 25% smallest of the 576 scales, 4x fewer dimensions (a larger lr), mask refreshed every 50 steps
    "sparse_mezo_norm": (["zo.method=sparse_mezo", "zo.scope=^norm/", "optim.sparsity=0.75", "optim.mask_every=50"],
                         [1e-1, 3e-2]),
    # the same on the lora scope (~10^8 weights, dense directions): lr priors, not swept -- every ZO row on this
    # scope stays at zero-shot in this budget, and a sweep there costs more than the table
    "fzoo_lora": (["zo.method=fzoo", "zo.scope=lora", "zo.members=4"], [1e-5]),
    "hizoo_lora": (["zo.method=hizoo", "zo.scope=lora", "optim.hessian_smooth=1e-6"], [1e-5]),
    "sparse_mezo_lora": (["zo.method=sparse_mezo", "zo.scope=lora", "optim.sparsity=0.75"], [1e-5]),
    # ZO-Muon: LoZO's rank-2 estimate orthogonalised; lr is a step length per direction (Muon's scale): a prior
    "zo_muon_lora": (["zo.method=lozo", "zo.scope=lora", "optim.name=zo_muon"], [1e-1]),
}
# rows whose test split is not evaluated: the ZO rows on the lora scope, which stay at zero-shot on dev in this budget
# (their dev curve says so) -- a test evaluation costs as much CPU as most of a row's training
DEV_ONLY = {"fzoo_lora", "hizoo_lora", "sparse_mezo_lora", "zo_muon_lora"}
LR_FROM = {"lozo_lora_k4": "lozo_lora_k1", "factorized_lora": "lozo_lora_k1", "lozo_m_lora": "lozo_lora_k1"}
ICL = {"icl_k4": (4, 256), "icl_k16": (16, 1024)}  # k demonstrations, task.max_length that holds them
BASE = [
    "task.num_train=1000", "task.num_dev=500", "task.num_test=1000", "train.eval_examples=null",
    "train.eval_batch_size=50", "train.progress=false", "train.batch_size=16", "optim.name=null",
]


def _config(overrides):
    from zojax.config import load_config

    return load_config(None, BASE + overrides)


def _load_model(cfg):
    from zojax.accelerator import resolve_dtype
    from zojax.models import from_pretrained
    from zojax.run.build import _DTYPES

    # model.dtype "auto": float32 on the CPU, as the trainer resolves it
    return from_pretrained(cfg.model.name, dtype=_DTYPES[resolve_dtype(cfg.model.dtype)],
                           param_dtype=_DTYPES[cfg.model.param_dtype])


def _cpu_wall():
    return time.process_time(), time.time()


def _load():
    return round(os.getloadavg()[0], 2)


def _evaluate(run, params, split, limit=None):
    from zojax.run import evaluate

    c0, w0 = _cpu_wall()
    out = evaluate(run, params, split, limit)
    c1, w1 = _cpu_wall()
    return {"accuracy": out.get("accuracy"), "loss": out["loss"], "examples": out["examples"],
            "cpu_seconds": c1 - c0, "wall_seconds": w1 - w0}


def eval_row(model, k: int, max_length: int, dev_limit=None) -> dict:
    """Zero-shot (k = 0) or in-context learning with k demonstrations: dev and test accuracy."""
    from zojax.run import build_run

    cfg = _config([f"task.icl_examples={k}", f"task.max_length={max_length}"])
    run = build_run(cfg, model=model)
    load0 = _load()
    dev = _evaluate(run, run.params, "dev", dev_limit)
    test = _evaluate(run, run.params, "test")
    return {
        "kind": "eval", "icl_examples": k, "max_length": max_length, "dev_accuracy": dev["accuracy"],
        "test_accuracy": test["accuracy"], "steps": 0, "forward_passes": 0,
        "eval_cpu_seconds": dev["cpu_seconds"] + test["cpu_seconds"],
        "eval_wall_seconds": dev["wall_seconds"] + test["wall_seconds"],
        "demonstrations_dropped": run.data_info["icl_demonstrations_dropped"], "load_avg": [load0, _load()],
    }


def forwards_per_step(cfg) -> int:
    """Forward passes over one batch per step: ZO scores 2K (K+1 one-sided, 2K+1 HiZOO) perturbed copies; a
    first-order step is one forward and one backward, counted as 3 forward-equivalents."""
    z = cfg.zo
    if z.method == "fo":
        return 3
    if z.method == "hizoo":
        return 2 * z.members + 1  # and L(theta) for the curvature
    return z.members + 1 if z.sided == "one" else 2 * z.members


def train_row(model, overrides: list[str], lr: float, budget: float, *, dev_points: int = 2, dev_limit=None,
              test: bool = True, steps_per_call: int = 2, unit: str = "cpu") -> dict:
    """Train until ``budget`` CPU seconds of training calls are spent (``unit="forwards"``: until ``budget``
    forward passes are scored); dev accuracy along the way, test at the end."""
    import jax.numpy as jnp

    from zojax import tasks
    from zojax.optim import init
    from zojax.run import build_run, weights

    # train.steps sets the schedule's horizon only (constant lr here): the budget decides when to stop
    cfg = _config(overrides + [f"optim.lr={lr}", "train.steps=100000", f"train.steps_per_call={steps_per_call}"])
    run = build_run(cfg, model=model)
    state, frozen = init(jax.tree.map(jnp.copy, run.params), run.spec, run.optimizer, jax.random.PRNGKey(cfg.train.seed))

    def batches(step):
        return tasks.train_batches(run.split("train"), cfg.task.data_seed, step, steps_per_call, cfg.train.batch_size,
                                   seq_len=run.split("train").seq_len)

    c0, w0 = _cpu_wall()
    compiled = run.compiled.run_steps.lower(state, frozen, batches(0)).compile()
    c1, w1 = _cpu_wall()
    record = {"kind": "train", "overrides": overrides, "lr": lr,
              ("budget_cpu_seconds" if unit == "cpu" else "budget_forward_passes"): budget,
              "compile_cpu_seconds": c1 - c0, "compile_wall_seconds": w1 - w0, "load_avg": [_load()]}
    fwd = forwards_per_step(cfg)
    marks = [budget * (i + 1) / dev_points for i in range(dev_points)]
    curve, losses, curvature = [], [], []
    step, cpu, wall, skipped = 0, 0.0, 0.0, 0
    eval_cpu = eval_wall = 0.0
    while marks:
        b = batches(step)
        c0, w0 = _cpu_wall()
        state, info = compiled(state, frozen, b)
        loss = np.asarray(info.losses)  # blocks until the call is done
        c1, w1 = _cpu_wall()
        cpu, wall, step = cpu + (c1 - c0), wall + (w1 - w0), step + steps_per_call
        spent = cpu if unit == "cpu" else step * fwd
        losses.append(float(loss[np.asarray(info.applied)].mean()) if np.asarray(info.applied).any() else float("nan"))
        if info.curvature is not None:
            curvature.append(float(np.abs(np.asarray(info.curvature)).mean()))
        if not np.isfinite(losses[-1]) and len(losses) > 3 and not np.isfinite(losses[-3:]).any():
            record["diverged_at_step"] = step  # three calls in a row with no finite loss: stop early
            break
        if spent >= marks[0]:
            marks.pop(0)
            dev = _evaluate(run, weights(run, state, frozen), "dev", dev_limit)
            eval_cpu, eval_wall = eval_cpu + dev["cpu_seconds"], eval_wall + dev["wall_seconds"]
            curve.append({"step": step, "train_cpu_seconds": cpu, "train_wall_seconds": wall,
                          "forward_passes": step * fwd, "dev_accuracy": dev["accuracy"], "dev_loss": dev["loss"],
                          "load_avg": _load()})
            print(f"  step {step}: {cpu:.0f} cpu-s, {wall:.0f} wall-s, dev {dev['accuracy']:.4f}", flush=True)
    skipped = int(state.skipped)
    if curvature:  # HiZOO: how large the curvature along a direction is (what hessian_smooth is weighed against)
        record["mean_abs_curvature"] = float(np.mean(curvature))
    record.update(steps=step, forward_passes=step * fwd, forwards_per_step=fwd, train_cpu_seconds=cpu,
                  train_wall_seconds=wall, skipped_steps=skipped, curve=curve, train_loss=losses,
                  dev_accuracy=curve[-1]["dev_accuracy"] if curve else None)
    if test:  # the sweep never looks at the test split
        final = _evaluate(run, weights(run, state, frozen), "test")
        eval_cpu, eval_wall = eval_cpu + final["cpu_seconds"], eval_wall + final["wall_seconds"]
        record["test_accuracy"] = final["accuracy"]
    record.update(eval_cpu_seconds=eval_cpu, eval_wall_seconds=eval_wall)
    record["load_avg"].append(_load())
    return record


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)  # a reader never sees half a file, and a killed run keeps the rows so far


def sweep(rows: list[str], budget: float, dev_limit: int, out: Path, dev_points: int = 1, unit: str = "cpu") -> dict:
    """Each row's learning rates for ``budget`` CPU seconds (``unit="forwards"``: forward passes); the best final
    dev accuracy on the first ``dev_limit`` dev reviews (``dev_points`` evaluations along the way give the curve)."""
    budget_key = "budget_cpu_seconds" if unit == "cpu" else "budget_forward_passes"
    model = _load_model(_config([]))
    data = {budget_key: budget, "dev_examples": dev_limit, "machine": _machine(), "rows": {}, "chosen": {}}
    if out.exists():  # rows swept earlier (other rows, other budgets) are kept
        data = {**json.loads(out.read_text()), budget_key: budget, "dev_examples": dev_limit}
    for name in rows:
        overrides, lrs = ROWS[name]
        for lr in lrs:
            print(f"sweep {name} lr={lr}", flush=True)
            rec = train_row(model, overrides, lr, budget, dev_points=dev_points, dev_limit=dev_limit, test=False,
                            unit=unit)
            data["rows"].setdefault(name, []).append({**{k: rec.get(k) for k in (
                "lr", "steps", "forward_passes", "dev_accuracy", "train_cpu_seconds", "train_wall_seconds",
                "diverged_at_step", "load_avg", "curve")}, budget_key: budget})
            _write(out, data)
        tried = [r for r in data["rows"].get(name, []) if r["dev_accuracy"] is not None
                 and r.get(budget_key) == budget]
        data["chosen"][name] = max(tried, key=lambda r: r["dev_accuracy"])["lr"] if tried else lrs[0]
        _write(out, data)
    return data


def chosen_lr(name: str, swept: dict) -> float:
    source = LR_FROM.get(name, name)
    return swept.get("chosen", {}).get(source, ROWS[source][1][0])


def table(rows: list[str], budget: float, out: Path, sweep_path: Path, dev_limit: int | None, resume: bool = False,
          dev_points: int = 2, unit: str = "cpu", test: bool = True) -> dict:
    swept = json.loads(sweep_path.read_text()) if sweep_path.exists() else {}
    model = _load_model(_config([]))
    data = {("budget_cpu_seconds_per_row" if unit == "cpu" else "budget_forward_passes_per_row"): budget,
            "dev_examples": dev_limit or 500, "machine": _machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "lr_source": str(sweep_path.name) if swept else "priors",
            "rows": {}}
    if resume and out.exists():  # keep the rows a killed or earlier run measured; add the missing ones
        data = json.loads(out.read_text())
        data.setdefault("resumed", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    t0 = time.time() - data.get("wall_seconds", 0.0)
    for name in (r for r in rows if r not in data["rows"]):
        print(f"{name} ({time.time() - t0:.0f} s)", flush=True)
        if name == "zero_shot":
            rec = eval_row(model, 0, 48, dev_limit)
        elif name in ICL:
            rec = eval_row(model, *ICL[name], dev_limit)
        else:
            rec = train_row(model, ROWS[name][0], chosen_lr(name, swept), budget, dev_limit=dev_limit,
                            dev_points=dev_points, test=test and name not in DEV_ONLY, unit=unit)
            rec["lr_source"] = "sweep" if LR_FROM.get(name, name) in swept.get("chosen", {}) else "prior"
        rec["row_wall_seconds"] = time.time() - t0 - sum(r.get("row_wall_seconds", 0) for r in data["rows"].values())
        data["rows"][name] = rec
        data["wall_seconds"] = time.time() - t0
        _write(out, data)
        print(f"  -> dev {rec.get('dev_accuracy')}, test {rec.get('test_accuracy')}", flush=True)
    return data


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zero = data["rows"].get("zero_shot", {}).get("dev_accuracy")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rec in data["rows"].items():
        if rec["kind"] == "eval":
            for ax in axes:
                ax.axhline(rec["dev_accuracy"], ls="--", lw=0.8, color="gray" if name == "zero_shot" else None, label=name)
            continue
        pts = ([{"train_cpu_seconds": 0, "forward_passes": 0, "dev_accuracy": zero}] if zero is not None else []) + rec["curve"]
        axes[0].plot([p["train_cpu_seconds"] for p in pts], [p["dev_accuracy"] for p in pts], "o-", label=name)
        axes[1].plot([p["forward_passes"] for p in pts], [p["dev_accuracy"] for p in pts], "o-", label=name)
    for name, rec in data.get("references", {}).items():  # rows of another table (another budget), dashed
        label = f"{name} ({rec['measured_in']})"
        axes[0].plot([p["train_cpu_seconds"] for p in rec["curve"]], [p["dev_accuracy"] for p in rec["curve"]], "x--",
                     label=label)
        axes[1].plot([p["forward_passes"] for p in rec["curve"]], [p["dev_accuracy"] for p in rec["curve"]], "x--",
                     label=label)
    dev = f"dev accuracy ({data.get('dev_examples', 500)} reviews)"
    axes[0].set(xlabel="training CPU seconds (process time, 2 shared cores)", ylabel=dev)
    if any(name.startswith("fo_") for name in data["rows"]):
        axes[1].set_xscale("symlog", linthresh=10)  # ZO rows take ~5x more (cheaper) passes than first-order ones
    axes[1].set(xlabel="forward passes of a 16-review batch (fo: 3 per step)", ylabel=dev, xlim=(0, None))
    axes[0].legend(fontsize=7, loc="upper left")
    budget = ("equal CPU-time budget per row" if "budget_cpu_seconds_per_row" in data
              else f"equal budget of {data.get('budget_forward_passes_per_row'):g} forward passes per row")
    loads = [x for r in data["rows"].values() if r["kind"] == "train" for x in r["load_avg"]]
    cores = data.get("machine", {}).get("cpus") or 2
    load = (f"measured under load (load average up to {max(loads):.0f} on {cores} cores; per row: load_avg in the JSON)"
            if loads and max(loads) > cores else "load average per row: load_avg in the JSON")
    fig.suptitle(f"SmolLM2-135M-Instruct, Rotten Tomatoes: {budget}\n{load}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LABELS = {
    "zero_shot": "zero-shot", "icl_k4": "ICL, k = 4 demonstrations", "icl_k16": "ICL, k = 16 demonstrations",
    "mezo_norm": "MeZO, final norm (the default's method)", "lozo_lora_k1": "LoZO, lora scope, K = 1",
    "lozo_lora_k4": "LoZO, lora scope, K = 4", "mezo_all_lazy": "MeZO, all parameters (lazy_dense)",
    "fo_adamw_all": "first-order AdamW, all parameters", "fo_adamw_lora": "first-order AdamW, lora scope",
    "factorized_lora": "factorized r = 8, lora scope", "lozo_m_lora": "LoZO-M (momentum 0.9), lora scope",
    "fo_adamw_norm": "first-order AdamW, final norm", "mezo_norm_k16": "MeZO, final norm, K = 16",
    "fzoo_norm": "FZOO, final norm, K = 4", "hizoo_norm": "HiZOO, final norm", "sparse_mezo_norm": "Sparse MeZO, final norm",
    "fzoo_lora": "FZOO, lora scope, K = 4", "hizoo_lora": "HiZOO, lora scope", "sparse_mezo_lora": "Sparse MeZO, lora scope",
    "zo_muon_lora": "ZO-Muon (LoZO r = 2, orthogonalised), lora scope",
}

TARGET_DEV = 0.70  # issue 25: forward passes to reach 70% dev


def forwards_to(record: dict, accuracy: float = TARGET_DEV) -> int | None:
    """Forward passes at the first dev evaluation that reached ``accuracy`` (None: none did). The resolution is the
    row's dev evaluations: the target may have been crossed anywhere since the previous one.

    >>> forwards_to({"curve": [{"forward_passes": 40, "dev_accuracy": 0.65}, {"forward_passes": 80, "dev_accuracy": 0.71}]})
    80
    """
    return next((p["forward_passes"] for p in record.get("curve", []) if p["dev_accuracy"] >= accuracy), None)


def _reached(record: dict) -> str:
    if record["kind"] == "eval":
        return "–"
    n = forwards_to(record)
    return f"{n}" if n is not None else f"not in {record['forward_passes']}"


def markdown(data: dict) -> str:
    """The docs/quality.md table of a results file (every number in it comes from the file)."""
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["| row | lr | test acc. (1000) | dev acc. | steps | forward passes | fwd. passes to 70% dev | train CPU s | "
             "train wall s | eval wall s | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in data["rows"].items():
        lr = f"{r['lr']:g}" if "lr" in r else "–"
        lines.append(
            f"| {LABELS.get(name, name)} | {lr} | {pct(r.get('test_accuracy'))} | {pct(r.get('dev_accuracy'))} | "
            f"{r['steps']} | {r['forward_passes']} | {_reached(r)} | {r.get('train_cpu_seconds', 0):.0f} | "
            f"{r.get('train_wall_seconds', 0):.0f} | {r['eval_wall_seconds']:.0f} | "
            f"{'–'.join(f'{x:.1f}' for x in r['load_avg'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", action="store_true", help="choose learning rates on dev (writes --sweep-json)")
    p.add_argument("--rows", default=None, help="comma-separated rows (default: all, in order of importance)")
    p.add_argument("--budget", type=float, default=240.0,
                   help="CPU seconds of training per trainable row (--budget-unit forwards: forward passes)")
    p.add_argument("--budget-unit", choices=["cpu", "forwards"], default="cpu",
                   help="cpu: process CPU seconds in training calls; forwards: forward passes of a batch (load-independent)")
    p.add_argument("--dev-limit", type=int, default=200,
                   help="dev reviews evaluated (the first N of 500; 0: all): the sweep's judge and the curves")
    p.add_argument("--dev-points", type=int, default=None,
                   help="dev evaluations along each budget (default: 1 in a sweep, 2 in the table)")
    p.add_argument("--json", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--sweep-json", type=Path, default=RESULTS / "quality_sweep.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "quality.png")
    p.add_argument("--report", action="store_true", help="print the docs/quality.md table of --json and redraw --plot")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --json, measure the others")
    p.add_argument("--no-test", action="store_true", help="dev curves only: skip every row's test evaluation")
    p.add_argument("--reference", action="append", default=[], metavar="FILE:ROW",
                   help="with --report: plot ROW of results FILE (another table, another budget) as a dashed reference")
    p.add_argument("--merge", type=Path, action="append", default=[],
                   help="with --report: add the rows of this results file (e.g. measured by a parallel process) to --json")
    args = p.parse_args(argv)
    if args.report:
        data = json.loads(args.json.read_text())
        for extra in args.merge:
            other = json.loads(extra.read_text())
            data["rows"].update({k: {**v, "measured_in": extra.name} for k, v in other["rows"].items()})
            data.setdefault("merged", []).append(extra.name)
        for ref in args.reference:
            path, row = ref.rsplit(":", 1)
            data.setdefault("references", {})[row] = {**json.loads(Path(path).read_text())["rows"][row],
                                                      "measured_in": Path(path).name}
        if args.merge or args.reference:
            _write(args.json, data)
        plot(data, args.plot)
        print(markdown(data))
        return 0
    if args.sweep:
        rows = args.rows.split(",") if args.rows else [n for n, (_, lrs) in ROWS.items() if len(lrs) > 1]
        sweep(rows, args.budget, args.dev_limit or None, args.sweep_json, args.dev_points or 1, args.budget_unit)
        return 0
    order = ["zero_shot", "mezo_norm", "fo_adamw_all", "lozo_lora_k1", "icl_k4", "fo_adamw_lora", "mezo_all_lazy",
             "lozo_lora_k4", "factorized_lora", "lozo_m_lora", "icl_k16"]
    rows = args.rows.split(",") if args.rows else order
    unknown = [r for r in rows if r not in ROWS and r not in ICL and r != "zero_shot"]
    if unknown:
        p.error(f"unknown rows {unknown}; known: {order + [r for r in ROWS if r not in order]}")
    data = table(rows, args.budget, args.json, args.sweep_json, args.dev_limit or None, args.resume, args.dev_points or 2,
                 args.budget_unit, not args.no_test)
    plot(data, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
