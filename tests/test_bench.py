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
from zojax.noise import Gaussian, Rademacher, dense_direction
from zojax.tasks import classification_loss

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

HEADLINE = [
    "inference_efficiency_lozo",
    "inference_efficiency_factorized",
    "inference_efficiency_mezo",
    "speedup_vs_torch_k1",
    "speedup_vs_torch_k8",
    "memory_ratio_mezo",
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
    full = dense_direction(noise, key, shape, dtype)
    rows = jnp.array([[4, 0], [2, 2]])
    got = nn.dense_rows(noise, key, shape, dtype, rows)
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(full[rows], np.float32))
    one = jax.jit(lambda i: nn.dense_rows(noise, key, shape, dtype, i))(jnp.int32(3))
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


def test_gpu_script_runs_its_tiny_shape_on_cpu(tmp_path):
    """``bench/gpu.sh --tiny``: the device suite's wiring (profile, flags, JSON) at a tiny shape."""
    out = tmp_path / "gpu-tiny.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", ZOJAX_BENCH_CACHE="off")
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--tiny", "--only", "memory", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["profile"] == "device-tiny"
    assert _positive_finite(res["memory_ratio_mezo"])
    assert "speedup_vs_torch_k1" not in res  # the torch baseline is the CPU comparison only
