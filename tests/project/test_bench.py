"""The benchmark scripts still run: the tiny path of bench/run.py end to end, and the pieces the
benchmarks rely on (the torch baseline's weights, the lazy dense path, row-wise direction draws).

No timing assertions: timings on a shared CI machine are noise; the README's Benchmarks section has the numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zojax
from zojax import nn
from zojax.directions import Gaussian, Rademacher
from zojax.tasks import classification_loss

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

HEADLINE = [
    "inference_efficiency_lozo",
    "inference_efficiency_factorized",
    "inference_efficiency_mezo",
    "speedup_vs_torch_k1",
    "speedup_vs_torch_k8",
    "memory_ratio_mezo",
    "memory_ratio_lozo",
    "memory_ratio_lozo_chunked",
]


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_tiny_bench_writes_every_key(tmp_path):
    """``python bench/run.py --tiny --json FILE``: every headline key, positive and finite."""
    out = tmp_path / "tiny.json"
    env = dict(os.environ)
    # compile time dominates at this size: fewer LLVM optimisations, a fresh program cache
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    env["ZOJAX_BENCH_CACHE"] = str(tmp_path / "xla-cache")
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in HEADLINE:
        assert _positive_finite(res[key]), (key, res.get(key))
    for key in ("scaling_k_growth_ratio_max", "scaling_b_growth_ratio_max"):
        assert _positive_finite(res[key]), key
    for m in common.METHODS:
        for k in (1, 8):
            assert _positive_finite(res[f"inference_efficiency_{m}_tinyllama_k{k}"])
    for m in ("lozo", "mezo"):
        assert _positive_finite(res[f"speedup_vs_torch_{m}_k8"])
    assert set(res["targets"]) >= set(HEADLINE)
    assert res["details"]["memory"]["method"] == "xla_memory_analysis"


def test_torch_baseline_has_zojax_weights_and_loss():
    """The torch model is built from the same weights: same loss before any step; a step runs."""
    torch = pytest.importorskip("torch")
    from bench import torch_baseline

    for name in ("tiny-llama", "tiny-opt"):
        bundle = common.load(name)
        batch = common.make_batch(bundle, 3, 12, seed=1)
        with jax.default_matmul_precision("highest"):
            ours = float(jax.jit(common.loss_fn(bundle))(bundle.params, batch))
        model = torch_baseline.to_torch(bundle)
        zo = torch_baseline.TorchZO(model, batch, "lozo", members=2)
        np.testing.assert_allclose(zo.zo_forward(), ours, rtol=1e-4, atol=1e-5)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        losses = zo.step()
        assert len(losses) == 2 and all(np.isfinite(losses).ravel())
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(torch_baseline.LORA_NAMES.search(n) for n in changed)
        mezo = torch_baseline.TorchZO(model, batch, "mezo", members=1)
        assert np.isfinite(mezo.step()).all()


@pytest.mark.parametrize("noise", [Gaussian(), Rademacher()], ids=["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_dense_rows_are_the_full_draws_rows(noise, dtype):
    key = jax.random.fold_in(jax.random.PRNGKey(0), 11)
    shape = (5, 7, 3)
    full = noise.dense(key, shape, dtype)
    rows = jnp.array([[4, 0], [2, 2]])
    got = noise.dense_rows(key, shape, dtype, rows)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(full[rows], np.float32))
    one = jax.jit(lambda i: noise.dense_rows(key, shape, dtype, i))(jnp.int32(3))
    np.testing.assert_array_equal(np.asarray(one, np.float32), np.asarray(full[3], np.float32))


@pytest.mark.parametrize("head", ["option_tokens", "full_vocab"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_lazy_dense_scores_like_the_generic_path(name, head, monkeypatch):
    """``ZOSpec(lazy_dense=True)`` (directions drawn layer by layer inside the model) gives the
    generic path's losses: with the head read at the option tokens only (rows drawn for those
    tokens) and over the whole vocabulary (a vocabulary-blocked tied head)."""
    monkeypatch.setattr(nn, "_ATTEND_BLOCK", 100)  # 512-token vocab: 6 blocks, the last overlapping
    bundle = common.load(name)
    batch = common.make_batch(bundle, 3, 12)
    loss = common.loss_fn(bundle)
    if head == "full_vocab":
        def loss(params, batch, family=bundle.family, config=bundle.config):  # an apply without tokens
            return classification_loss(
                lambda ids, mask, pos: family.apply(config, params, ids, mask, logits_positions=pos), batch)
    generic = zojax.ZOSpec(noise=Gaussian(), eps=1e-2, members=3, chunk_size=2)
    lazy = dataclasses.replace(generic, lazy_dense=True)
    with jax.default_matmul_precision("highest"):
        a = jax.jit(lambda p: zojax.score(loss, p, batch, jax.random.PRNGKey(0), 5, generic))(bundle.params)
        b = jax.jit(lambda p: zojax.score(loss, p, batch, jax.random.PRNGKey(0), 5, lazy))(bundle.params)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(a[:, 0] - a[:, 1]).max()) > 0


def test_lazy_dense_step_holds_no_model_copy():
    """A dense full-parameter MeZO step with K=16 on the lazy path: peak memory (XLA's analysis)
    within 1.3x of inference on the same batch at SmolLM2-135M's shapes (2 layers)."""
    from bench import measures

    r = measures.memory("smollm2-135m", layers=2, batch_size=4, seq_len=16, members=16, methods=("mezo",),
                        log=lambda *_: None)
    assert r["mezo"]["ratio"] < 1.3, r["mezo"]


# what bench/gpu.sh must write (issue 11), spelled out rather than imported from bench/run.py
GPU_HEADLINE = [
    "forward_vs_torch", "forward_mfu_b64",
    *(f"lozo_step_s_opt13b_b{b}" for b in (16, 32, 64, 128)),
    *(f"inference_efficiency_{m}_k{k}" for m in ("lozo", "factorized", "mezo") for k in (1, 8)),
    "speedup_vs_torch_lozo_k1", "speedup_vs_torch_mezo_k1",
    "rng_values_per_s_zojax", "rng_values_per_s_torch", "forward_unrolled_over_scan",
    "forward_without_xla_defaults", "lozo_k1_without_xla_defaults",
]


def _gpu_sh(tmp_path, *args, timeout=1200):
    env = dict(os.environ, JAX_PLATFORMS="cpu", ZOJAX_BENCH_CACHE="off", TMPDIR=str(tmp_path))
    # compiles dominate at a tiny shape: fewer LLVM optimisations
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _stamp(path: Path):
    return path.stat().st_mtime_ns if path.exists() else None


@pytest.mark.slow
def test_gpu_script_tiny_writes_every_headline_key(tmp_path):
    """``bench/gpu.sh --tiny``: every unit of the device suite (torch process included) at a tiny
    shape on CPU, every headline key positive and finite, in a temp file, never in gpu.json."""
    from bench import run

    results = ROOT / "bench" / "results" / "gpu.json"
    before = _stamp(results)
    proc = _gpu_sh(tmp_path, "--tiny")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _stamp(results) == before  # tiny numbers never land in the device results
    res = json.loads((tmp_path / "zojax-gpu-tiny.json").read_text())
    assert res["profile"] == "device-tiny" and res["complete"], res["units"]
    for key in GPU_HEADLINE + list(run.DEVICE_TARGETS):
        assert _positive_finite(res.get(key)), (key, res.get(key))
    assert set(res["targets"]) == set(run.DEVICE_TARGETS)
    assert {"name", "driver"} <= set(res["gpu"]) and {"jax", "torch_side_torch"} <= set(res["versions"])
    assert res["details"]["forward_mfu"]["sequences"] == 128  # batch 64: 2·B sequences
    assert all(res["units"][u]["status"] == "done" for u in run.DEVICE_UNITS)
    assert "seed paper 0.367 s" in proc.stdout and "rng_values_per_s_torch" in proc.stdout  # the table


@pytest.mark.slow
def test_gpu_script_budget_and_resume(tmp_path):
    """A unit that would pass ``--budget`` is skipped; nothing measured writes no file (no
    clobbering); ``--resume`` keeps a previous run's finished units and recomputes their keys."""
    first, second, empty = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    proc = _gpu_sh(tmp_path, "--tiny", "--only", "rng", "--json", str(first), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = json.loads(first.read_text())
    assert _positive_finite(a["rng_values_per_s_zojax"]) and not a["complete"]
    proc = _gpu_sh(tmp_path, "--tiny", "--resume", str(first), "--budget", "0", "--json", str(second),
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    b = json.loads(second.read_text())
    assert b["rng_values_per_s_zojax"] == a["rng_values_per_s_zojax"] and b["units"]["rng"]["resumed"]
    assert b["units"]["lozo_k1"]["status"] == "skipped" and "forward_vs_torch" not in b
    proc = _gpu_sh(tmp_path, "--tiny", "--budget", "0", "--json", str(empty), timeout=600)
    assert proc.returncode == 0 and not empty.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_gpu_script_refuses_a_cpu_backend(tmp_path):
    """Without ``--tiny``, no accelerator: exit 2, nothing written (no numbers for the device file)."""
    out = tmp_path / "gpu.json"
    proc = _gpu_sh(tmp_path, "--json", str(out), timeout=300)
    assert proc.returncode == 2 and not out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]


def test_forward_flops_counts_the_opt13b_forward():
    """The MFU numerator: 2 FLOPs per multiply-add of the 40 x 314.6M decoder kernels per token
    plus attention, at batch 64 (128 x 48 tokens): ~155 TFLOP, 209 ms at 75% of 989 TFLOP/s."""
    from bench import measures

    bundle = measures.abstract_bundle("opt-13b")
    d, f, L = 5120, 20480, 40
    kernels = L * (4 * d * d + 2 * d * f)
    expected = 128 * 48 * (2 * kernels + 4 * 48 * d * L) + 128 * 2 * d * 2
    assert measures.forward_flops(bundle, 128, 48) == pytest.approx(expected)
    assert 150e12 < expected < 160e12


def test_attribution_variants_switch_one_feature_each():
    """bench/attribution.py: each variant differs from the trainer's step in the feature it names only."""
    from bench import attribution

    found = attribution.variants(None, members=1)  # no bundle: dense MeZO one member at a time
    assert set(found) == {"mezo", "mezo_no_check", "lozo", "lozo_no_check", "lozo_zo_sgd", "lozo_zo_sgd_no_check"}
    for name, (method, spec, opt) in found.items():
        assert spec.check_update == ("no_check" not in name)
        assert spec == dataclasses.replace(common.spec_for(method, 1), check_update=spec.check_update)
        adapter_state = isinstance(opt, zojax.ZOTransformation)
        assert adapter_state == (method == "lozo" and "zo_sgd" not in name)


def test_attribution_floor_parts_are_the_steps_parts():
    """bench/attribution.py's floors: the update alone moves the weights by exactly ``-lr * z`` (coefficient 1,
    directions regenerated from the run key), and scoring alone gives the population's losses."""
    from bench import attribution

    bundle = common.load("tiny-llama")
    spec = common.spec_for("mezo", 1, bundle=bundle)
    update = attribution.UpdateRunner(bundle, spec, common.optimizer(1e-3, spec))
    before = jax.tree.map(jnp.copy, update.state.params)
    z = zojax.draw_directions(before, spec.noise, update.state.key, 0, 0)
    after = update()
    for b, a, d in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(z)):
        np.testing.assert_allclose(np.asarray(a - b), np.asarray(-1e-3 * d), atol=1e-6)
    losses = attribution.ScoreRunner(bundle, spec, common.make_batch(bundle, 2, 8))()
    assert losses.shape == (1, 2) and bool(jnp.all(jnp.isfinite(losses))) and losses[0, 0] != losses[0, 1]
