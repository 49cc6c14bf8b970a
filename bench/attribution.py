"""Where a ZO step's time over inference goes: the step with one feature switched off at a time.

The quick profile's SmolLM2 shape (4 layers, batch 16 x 48, K = 1), every variant side by side with the
plain forward of the same 2·K·B sequences (round-robin, medians)::

    python bench/attribution.py --json bench/results/cpu_attribution.json

Variants: dense MeZO (lazy_dense) with and without the update's finiteness check
(``ZOSpec(check_update=False)``); LoZO on the adapter path with the dynamic adapter state
(``lozo_adapter``, the trainer's default) and with ``zo_sgd`` (the weights rewritten every step),
each with and without the check. The floors: MeZO's and factorized's scoring alone (``zojax.score``)
and update alone (directions regenerated, weights donated), next to the factorized step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``zojax`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import jax  # noqa: E402

import zojax  # noqa: E402
from bench import common  # noqa: E402
from zojax.optim import apply_update  # noqa: E402


def variants(bundle, members: int) -> dict[str, tuple[str, object, object]]:
    """name -> (method, spec, optimizer)."""
    out = {}
    for method in ("mezo", "lozo"):
        base = common.spec_for(method, members, bundle=bundle)
        for check in (True, False):
            spec = dataclasses.replace(base, check_update=check)
            suffix = "" if check else "_no_check"
            out[f"{method}{suffix}"] = (method, spec, common.optimizer(1e-7, spec))
            if method == "lozo":  # the weights rewritten every step instead of the adapter state
                out[f"lozo_zo_sgd{suffix}"] = (method, spec, zojax.zo_sgd(1e-7))
    return out


class ScoreRunner:
    """The population's losses alone (``zojax.score``): the step without estimate or update."""

    def __init__(self, bundle, spec, batch):
        loss = common.loss_fn(bundle)
        self.trainable, self.frozen = zojax.partition(bundle.params, spec.scope, spec.noise)
        self.fn = zojax.accelerator.jit(lambda t, f, b, k: zojax.score(loss, t, b, k, 0, spec, frozen=f))
        self.batch, self.key = batch, jax.random.PRNGKey(0)

    def __call__(self):
        return self.fn(self.trainable, self.frozen, self.batch, self.key)


class UpdateRunner:
    """The update alone: directions regenerated from the key, applied to the (donated) weights."""

    def __init__(self, bundle, spec, opt):
        params = jax.tree.map(jax.numpy.copy, bundle.params)
        self.state, _ = zojax.init(params, spec, opt, jax.random.PRNGKey(0))
        grad = zojax.ZOGrad(self.state.key, self.state.step, jax.numpy.ones(spec.members), spec.noise)
        self.fn = zojax.accelerator.jit(lambda p, s: apply_update(opt, grad, p, s), donate_argnums=(0, 1))

    def __call__(self):
        params, opt_state = self.fn(self.state.params, self.state.opt_state)
        self.state = self.state._replace(params=params, opt_state=opt_state)
        return params


def measure(layers: int = 4, batch_size: int = 16, seq_len: int = 48, members: int = 1, reps: int = 5,
            log=print) -> dict:
    bundle = common.load("smollm2-135m", layers=layers)
    batch = common.make_batch(bundle, batch_size, seq_len)
    fns = {"forward": common.InferenceRunner(bundle, batch, 2 * members)}
    for name, (method, spec, opt) in variants(bundle, members).items():
        fns[name] = common.StepRunner(bundle, method, members, batch, spec=spec, opt=opt)
    # the floors: a step is at least its scoring plus its update (both regenerate the directions)
    for method in ("mezo", "factorized"):
        spec = common.spec_for(method, members, bundle=bundle)
        opt = common.optimizer(1e-7, spec)
        if method == "factorized":
            fns[method] = common.StepRunner(bundle, method, members, batch, spec=spec, opt=opt)
        fns[f"{method}_score"] = ScoreRunner(bundle, spec, batch)
        fns[f"{method}_update"] = UpdateRunner(bundle, spec, opt)
    t = common.side_by_side(fns, reps=reps, warmup=1, log=log)
    forward = t["forward"].median
    return {"model": bundle.describe(), "batch_size": batch_size, "seq_len": seq_len, "members": members,
            "forward_s": forward,
            "step_over_forward": {n: v.median / forward for n, v in t.items() if n != "forward"},
            "timings": {n: v.as_dict() for n, v in t.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    common.enable_compilation_cache()
    load0 = os.getloadavg()[0]
    out = measure(reps=args.reps)
    out.update(machine=common.machine(), load_avg=[round(load0, 2), round(os.getloadavg()[0], 2)],
               measured=time.strftime("%Y-%m-%d %H:%M:%S"), jax=jax.__version__)
    for name, ratio in out["step_over_forward"].items():
        print(f"{name:24s} {ratio:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
