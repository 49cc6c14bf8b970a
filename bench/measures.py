"""The measures: inference efficiency, speedup over the torch training loop, memory, scaling,
and the device suite's pieces (one step against one forward, forward FLOPs, dense draws).

Each returns a JSON-ready dict. All comparisons are ratios of medians measured side by side
(interleaved round-robin, see :func:`common.side_by_side`) in the same process.
"""

from __future__ import annotations

import dataclasses
import gc
import math

import jax
import jax.numpy as jnp

import zojax

from . import common

# --- 1. inference efficiency -------------------------------------------------------------


def inference_efficiency(bundle, members=(1, 8), batch_size=16, seq_len=48, methods=common.METHODS,
                         reps=5, warmup=1, log=print) -> dict:
    """One ZO step over one plain forward of the same 2·K·B sequences, per K and method."""
    batch = common.make_batch(bundle, batch_size, seq_len)
    out = {"model": bundle.describe(), "batch_size": batch_size, "seq_len": seq_len, "by_k": {}}
    for k in members:
        log(f"  [efficiency] {bundle.name} K={k}: inference over {2 * k * batch_size} sequences vs "
            f"{', '.join(methods)} steps")
        fns = {"inference": common.InferenceRunner(bundle, batch, 2 * k)}
        for m in methods:
            fns[m] = common.StepRunner(bundle, m, k, batch)
        t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
        inf = t["inference"]
        row = {"inference_s": inf.median, "inference_cpu_s": inf.cpu_median}
        for m in methods:
            row[m] = {"step_s": t[m].median, "ratio": t[m].median / inf.median,
                      "ratio_cpu": t[m].cpu_median / inf.cpu_median, "first_call_s": t[m].compile_s}
            if m == "mezo":
                row[m]["chunk_size"] = fns[m].spec.chunk_size
        row["timings"] = {n: v.as_dict() for n, v in t.items()}
        out["by_k"][str(k)] = row
        log("    " + "  ".join(f"{m} {row[m]['ratio']:.3f}" for m in methods)
            + f"  (inference {inf.median:.3f}s)")
        del fns
        common.release()
    return out


# --- 2. against the torch training loop -----------------------------------------------------


def torch_speedup(bundle, members=(1, 8), batch_size=16, seq_len=48, methods=("lozo", "mezo"), reps=3,
                  warmup=1, log=print) -> dict:
    """Step time of the official-style torch MeZO / LoZO over zojax's step, same weights/batch/K."""
    from . import torch_baseline

    batch = common.make_batch(bundle, batch_size, seq_len)
    model = torch_baseline.to_torch(bundle)
    out = {"model": bundle.describe(), "batch_size": batch_size, "seq_len": seq_len, "by_k": {},
           "torch_threads": __import__("torch").get_num_threads()}
    for k in members:
        row = {}
        for m in methods:
            log(f"  [torch] {bundle.name} K={k} {m}: zojax step vs torch {m} step")
            fns = {"zojax": common.StepRunner(bundle, m, k, batch),
                   "torch": torch_baseline.TorchZO(model, batch, m, k)}
            t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
            row[m] = {"zojax_s": t["zojax"].median, "torch_s": t["torch"].median,
                      "speedup": t["torch"].median / t["zojax"].median,
                      "timings": {n: v.as_dict() for n, v in t.items()}}
            log(f"    speedup {row[m]['speedup']:.2f}x (torch {t['torch'].median:.2f}s, "
                f"zojax {t['zojax'].median:.2f}s)")
            del fns
            common.release()
        out["by_k"][str(k)] = row
    return out


# --- 3. memory ------------------------------------------------------------------------------


def _memory_stats(compiled) -> dict:
    m = compiled.memory_analysis()
    arg, out, alias, temp = (int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                             int(m.alias_size_in_bytes), int(m.temp_size_in_bytes))
    # donated inputs come back as outputs in the same buffers: count them once
    return {"argument_bytes": arg, "output_bytes": out, "alias_bytes": alias, "temp_bytes": temp,
            "peak_bytes": arg + out - alias + temp}


def abstract_bundle(name: str, layers: int | None = None, dtype=jnp.float32):
    """A bundle whose params are shapes only (``jax.ShapeDtypeStruct``): enough to compile."""
    import dataclasses

    from flax import nnx

    key = "smollm2-135m-shape" if name == "smollm2-135m" else name
    family, config = common.SHAPES[key]
    if layers is not None and layers < config.num_hidden_layers:
        config = dataclasses.replace(config, num_hidden_layers=layers)
    abstract = nnx.eval_shape(lambda: family.Model(config, param_dtype=dtype, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    return common.Bundle(name, family, config, params, dtype)


def memory(name: str, layers: int | None = None, batch_size=16, seq_len=48, members=16,
           chunk_size: int = 1, methods=("mezo", "lozo"), log=print) -> dict:
    """Peak bytes of a ZO step over plain inference, from XLA's compiled memory analysis.

    peak = argument + output - aliased (donated) + temp bytes of the compiled program, for
    the same shapes the timed runs use (weights are not needed to compile). Each step is compared
    with inference of the sequences it holds at once:

    * ``mezo``: dense full-parameter MeZO, ``chunk_size`` members at a time, against one batch;
    * ``lozo``: LoZO on the adapter path, all K members at once (2·K·B sequences in one program),
      against inference of those same 2·K·B sequences in one program (``inference_same_sequences``);
    * ``lozo_chunked``: the same LoZO step ``chunk_size`` members at a time, against one batch.
    """
    bundle = abstract_bundle(name, layers)
    loss = common.loss_fn(bundle)

    def inference(sequences):
        batch = common.make_batch(bundle, sequences, seq_len)
        return _memory_stats(jax.jit(loss).lower(bundle.params, batch).compile())

    batch = common.make_batch(bundle, batch_size, seq_len)
    inf = inference(batch_size)
    out = {"model": f"{name} ({bundle.config.num_hidden_layers} layers, shapes only)", "batch_size": batch_size,
           "seq_len": seq_len, "members": members, "method": "xla_memory_analysis", "inference": inf}
    specs = {"mezo": common.spec_for("mezo", members, chunk_size=chunk_size), "lozo": common.spec_for("lozo", members)}
    specs["lozo_chunked"] = dataclasses.replace(specs["lozo"], chunk_size=chunk_size)
    for method in methods + (("lozo_chunked",) if "lozo" in methods else ()):
        spec = specs[method]
        reference = inf
        if spec.chunk_size is None or spec.chunk_size >= members:
            reference = out["inference_same_sequences"] = inference(2 * members * batch_size)
        opt = common.optimizer(1e-7, spec)
        state, frozen = jax.eval_shape(lambda p, s=spec, o=opt: zojax.init(p, s, o, jax.random.PRNGKey(0)),
                                       bundle.params)
        compiled = zojax.make_step(loss, spec, opt).step.lower(state, frozen, batch).compile()
        st = _memory_stats(compiled)
        st["ratio"] = st["peak_bytes"] / reference["peak_bytes"]
        st["chunk_size"] = spec.chunk_size
        st["against"] = "inference_same_sequences" if reference is not inf else "inference"
        out[method] = st
        log(f"  [memory] {name} K={members} {method}: peak {st['peak_bytes'] / 2**20:.0f} MiB vs {st['against']} "
            f"{reference['peak_bytes'] / 2**20:.0f} MiB -> {st['ratio']:.3f}")
        common.release()
    return out


# --- 4. scaling ------------------------------------------------------------------------------


def _growth(xs: list[float]) -> list[float]:
    return [x / xs[0] for x in xs]


def scaling(bundle, members=(1, 2, 4, 8, 16), batch_sizes=(4, 8, 16, 32), fixed_batch=16, fixed_members=1,
            seq_len=48, method="lozo", reps=3, warmup=1, log=print) -> dict:
    """Step time against K (batch fixed) and against B (K fixed), next to inference of the same
    number of sequences (2·K·B). ``growth`` is time relative to the first point; the step
    scales no worse than inference when ``step_growth / inference_growth`` stays <= ~1."""
    out = {"model": bundle.describe(), "method": method, "seq_len": seq_len}
    for axis, values in (("members", members), ("batch_size", batch_sizes)):
        steps, infs = [], []
        for v in values:
            k = v if axis == "members" else fixed_members
            b = fixed_batch if axis == "members" else v
            log(f"  [scaling] {bundle.name} {method} K={k} B={b}")
            batch = common.make_batch(bundle, b, seq_len)
            fns = {"inference": common.InferenceRunner(bundle, batch, 2 * k),
                   "step": common.StepRunner(bundle, method, k, batch)}
            t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
            steps.append(t["step"].median)
            infs.append(t["inference"].median)
            del fns
            common.release()
        sg, ig = _growth(steps), _growth(infs)
        out[axis] = {
            "values": list(values),
            "sequences": [2 * (v if axis == "members" else fixed_members) * (fixed_batch if axis == "members" else v)
                          for v in values],
            "step_s": steps,
            "inference_s": infs,
            "step_over_inference": [s / i for s, i in zip(steps, infs)],
            "step_growth": sg,
            "inference_growth": ig,
            "growth_ratio": [a / b for a, b in zip(sg, ig)],
        }
        log(f"    {axis}: step/inference " + " ".join(f"{r:.3f}" for r in out[axis]["step_over_inference"]))
    return out


# --- 5. the device suite's units ------------------------------------------------------------


def step_vs_forward(bundle, method: str, members: int = 1, batch_size: int = 16, seq_len: int = 48,
                    reps: int = 3, warmup: int = 1, log=print) -> dict:
    """One ZO step against one plain forward of the same 2·K·B sequences, side by side.

    One method at a time, so at most two copies of the weights are resident (the model and the
    step's donated copy): an OPT-13B shape in bf16 is 24 GiB a copy.
    """
    batch = common.make_batch(bundle, batch_size, seq_len)
    log(f"  [{method}] {bundle.name} K={members} B={batch_size}: step vs forward of "
        f"{2 * members * batch_size} sequences")
    fns = {"forward": common.InferenceRunner(bundle, batch, 2 * members),
           "step": common.StepRunner(bundle, method, members, batch)}
    t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
    out = {"method": method, "members": members, "batch_size": batch_size, "seq_len": seq_len,
           "sequences": 2 * members * batch_size, "forward_s": t["forward"].median,
           "step_s": t["step"].median, "ratio": t["step"].median / t["forward"].median,
           "timings": {n: v.as_dict() for n, v in t.items()}}
    if method == "mezo":
        out["chunk_size"] = fns["step"].spec.chunk_size
    log(f"    step {out['step_s'] * 1e3:.1f} ms, forward {out['forward_s'] * 1e3:.1f} ms "
        f"-> {out['ratio']:.3f}")
    del fns
    gc.collect()  # frees the step's weights; compiled programs stay cached for the next unit
    return out


def unrolled_forward(bundle, batch_size: int = 16, seq_len: int = 48, reps: int = 3, warmup: int = 1,
                     log=print) -> dict:
    """The forward of 2·B sequences with the decoder layers scanned (the default) and unrolled, side by side."""
    batch = common.make_batch(bundle, batch_size, seq_len)
    fns = {"scan": common.InferenceRunner(bundle, batch, 2),
           "unrolled": common.InferenceRunner(bundle, batch, 2, unroll_layers=True)}
    t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
    out = {"batch_size": batch_size, "seq_len": seq_len, "sequences": 2 * batch_size,
           "scan_s": t["scan"].median, "unrolled_s": t["unrolled"].median,
           "unrolled_over_scan": t["unrolled"].median / t["scan"].median,
           "compile_s": {n: v.compile_s for n, v in t.items()}}
    log(f"    forward scan {out['scan_s'] * 1e3:.1f} ms, unrolled {out['unrolled_s'] * 1e3:.1f} ms "
        f"-> {out['unrolled_over_scan']:.3f}")
    return out


def xla_options(bundle, batch_size: int = 16, seq_len: int = 48, reps: int = 3, warmup: int = 1,
                log=print) -> dict:
    """The forward of 2·B sequences and a LoZO K = 1 step compiled with zojax's accelerator defaults
    (:data:`zojax.accelerator.XLA_OPTIONS`, the default) and without them, side by side."""
    batch = common.make_batch(bundle, batch_size, seq_len)
    fns = {"forward": common.InferenceRunner(bundle, batch, 2, fresh=True),
           "lozo": common.StepRunner(bundle, "lozo", 1, batch)}
    with common.without_xla_defaults():
        fns["forward_plain"] = common.InferenceRunner(bundle, batch, 2, fresh=True)
        fns["lozo_plain"] = common.StepRunner(bundle, "lozo", 1, batch)
    t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
    out = {"batch_size": batch_size, "seq_len": seq_len, "options": dict(zojax.accelerator.XLA_OPTIONS),
           **{f"{n}_s": v.median for n, v in t.items()},
           "forward_plain_over_defaults": t["forward_plain"].median / t["forward"].median,
           "lozo_plain_over_defaults": t["lozo_plain"].median / t["lozo"].median}
    log(f"    forward {out['forward_s'] * 1e3:.1f} ms (without the defaults {out['forward_plain_s'] * 1e3:.1f}), "
        f"LoZO {out['lozo_s'] * 1e3:.1f} ms (without {out['lozo_plain_s'] * 1e3:.1f})")
    del fns
    gc.collect()
    return out


def forward_flops(bundle, sequences: int, seq_len: int, options: int = 2) -> float:
    """FLOPs of the plain forward, as MFU counts them: 2 per multiply-add of every stacked decoder
    kernel per token, attention's QK^T and AV (4·T·d per token and layer, the causal mask not
    discounted, PaLM's convention; 0.2% of the total at T = 48) and the LM head at the option
    tokens of the last position only (all the loss reads). Norms, softmax and lookups: not counted."""
    c = bundle.config
    kernels = sum(math.prod(x.shape) for x in jax.tree.leaves(bundle.params["layers"]) if x.ndim == 3)
    per_token = 2 * kernels + 4 * seq_len * c.hidden_size * c.num_hidden_layers
    return float(sequences * seq_len * per_token + sequences * 2 * c.hidden_size * options)


def dense_draws(size: int, reps: int = 3, dtype: str = "bfloat16", log=print) -> dict:
    """Dense Gaussian draws per second (bench/rng.py's programs): ``zojax.random`` in each strategy
    and ``jax.random``, alone and fused into ``w - lr·c·z``. ``values_per_s`` is the draw that
    dense MeZO runs (``zojax.random.normal``, default strategy) fused into that update."""
    from zojax import random as zrandom

    from . import rng

    r = rng.run(size, reps, [dtype], strategies=zrandom.STRATEGIES)  # "auto" is what zojax runs
    fused = {row["generator"]: row["values_per_s"] for row in r["rows"]
             if row["kind"] == "normal" and row["mode"] == "fused"}
    out = {"elements": r["elements"], "shape": r["shape"], "dtype": dtype,
           "values_per_s": fused["zojax auto"], "fused_values_per_s": fused, "rows": r["rows"]}
    rates = ", ".join(f"{g} {v / 1e9:.1f}G/s" for g, v in fused.items())
    log(f"  [rng] {dtype} normals in an update: {rates}")
    return out


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0
