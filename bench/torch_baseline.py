"""The training-loop way: MeZO and LoZO steps as their official PyTorch implementations run them.

What the official code does (princeton-nlp/MeZO ``trainer.py``: ``zo_perturb_parameters``,
``zo_step``, ``zo_update``; optml-group/LoZO: ``lowrank_zo_perturb_parameters``,
``lowrank_zo_step``, ``lowrank_zo_update``), reproduced here on a Hugging Face
``*ForCausalLM`` (eval mode, ``torch.no_grad``, sdpa attention, every CPU thread, or on the GPU with
directions drawn there, as the official code draws them; ``main`` is the device suite's torch process):

* one seed per direction (``np.random.randint``); ``torch.manual_seed(seed)`` before every pass
  over the parameters, so a direction is regenerated, never stored;
* in-place perturbation ``+eps z``, forward (loss L+), ``-2 eps z``, forward (L-), ``+eps z``;
  ``g = (L+ - L-) / (2 eps)``;
* the update regenerates z from the seed: ``theta -= lr * g * z`` (MeZO: dense Gaussian z over
  every trainable tensor; LoZO: ``z = U V^T`` for matrices with U (d_out x r) fresh from the
  seed and V (d_in x r) drawn every ``nu`` steps and kept, dense z for vectors);
* the loss comes from the model's full forward (logits at every position, as the official code
  computes them), then the verbalizer log-likelihoods at the last position and the
  cross-entropy over the options.

With K > 1 (n-SPSA) the K directions are scored one after another and the update applies
``mean_k g_k z_k`` as K regenerating passes. The batch is the one zojax scores: one sequence
per example (the official MeZO encodes each option as its own sequence, so this baseline does
half of its forward work on SST-2 -- it is the favourable reading for the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (the device suite's torch process): make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: the seed paper's "lora-only" scope, on torch parameter names
LORA_NAMES = re.compile(r"(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|fc1|fc2)\.weight$")


def to_torch(bundle, attn_implementation: str = "sdpa"):
    """The Hugging Face torch model with exactly ``bundle``'s weights (float32, eval mode)."""
    import jax
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(os.cpu_count() or 1)
    hf_config = bundle.config.to_hf()
    hf_config._attn_implementation = attn_implementation
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    state = {}
    host: dict[tuple, np.ndarray] = {}
    for name, spec in bundle.family.hf_param_map(bundle.config).items():
        if spec.path not in host:
            leaf = bundle.params
            for part in spec.path:
                leaf = leaf[part]
            host[spec.path] = np.asarray(jax.device_get(leaf), dtype=np.float32)
        a = host[spec.path]
        state[name] = torch.from_numpy(np.array(spec.to_hf(a if spec.layer is None else a[spec.layer]), copy=True))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the HF model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    return model.eval()


def torch_batch(batch):
    """The zojax :class:`~zojax.tasks.Batch` as torch tensors (one sequence per example)."""
    B = batch.input_ids.shape[0]
    ids = torch.from_numpy(np.asarray(batch.input_ids).reshape(B, -1).astype(np.int64))
    mask = torch.from_numpy(np.asarray(batch.attention_mask).reshape(B, -1).astype(np.int64))
    options = torch.from_numpy(np.asarray(batch.targets).reshape(B, -1).astype(np.int64))  # (B, O)
    labels = torch.from_numpy(np.asarray(batch.labels).astype(np.int64))
    return ids, mask, options, labels


class TorchZO:
    """MeZO (``method="mezo"``, full parameter) or LoZO (``"lozo"``, lora-only) on a torch model."""

    def __init__(self, model, batch, method: str, members: int = 1, *, eps: float = 1e-3, lr: float = 1e-7,
                 weight_decay: float = 0.0, rank: int = 2, lazy_interval: int = 100, seed: int = 0):
        if method not in ("mezo", "lozo"):
            raise ValueError(f"unknown method {method!r}")
        self.model, self.method, self.members = model, method, members
        self.eps, self.lr, self.wd, self.rank, self.nu = eps, lr, weight_decay, rank, lazy_interval
        device = next(model.parameters()).device
        self.ids, self.mask, self.options, self.labels = (t.to(device) for t in torch_batch(batch))
        self.rng = np.random.default_rng(seed)
        self.step_count = 0
        named = [(n, p) for n, p in model.named_parameters()]
        if method == "lozo":
            named = [(n, p) for n, p in named if LORA_NAMES.search(n)]
        self.named_parameters_to_optim = named
        self.v: list[dict[str, torch.Tensor]] = [{} for _ in range(members)]

    # -- the official algorithms --------------------------------------------------------------

    @torch.no_grad()
    def zo_forward(self) -> float:
        self.model.eval()
        logits = self.model(input_ids=self.ids, attention_mask=self.mask).logits  # full (B, T, V)
        last = torch.log_softmax(logits[:, -1, :].float(), dim=-1)
        option_lp = last.gather(1, self.options)  # (B, O)
        return torch.nn.functional.cross_entropy(option_lp, self.labels).item()

    def _normal(self, size, like: torch.Tensor) -> torch.Tensor:
        # on the parameter's device and dtype, as the official code draws it
        return torch.normal(mean=0, std=1, size=size, device=like.device, dtype=like.dtype)

    @torch.no_grad()
    def perturb(self, seed: int, member: int, scaling_factor: float):
        torch.manual_seed(seed)
        for name, param in self.named_parameters_to_optim:
            if self.method == "lozo" and param.data.ndim >= 2:
                u = self._normal((param.data.size(0), self.rank), param.data)
                param.data.add_(u @ self.v[member][name].t(), alpha=scaling_factor * self.eps)
            else:
                z = self._normal(param.data.size(), param.data)
                param.data.add_(z, alpha=scaling_factor * self.eps)

    @torch.no_grad()
    def update(self, seed: int, member: int, projected_grad: float):
        torch.manual_seed(seed)
        lr = self.lr / self.members
        for name, param in self.named_parameters_to_optim:
            if self.method == "lozo" and param.data.ndim >= 2:
                u = self._normal((param.data.size(0), self.rank), param.data)
                z = u @ self.v[member][name].t()
            else:
                z = self._normal(param.data.size(), param.data)
            if self.wd and "bias" not in name and "norm" not in name:
                param.data.mul_(1 - self.lr * self.wd / self.members)
            param.data.add_(z, alpha=-lr * projected_grad)

    @torch.no_grad()
    def step(self) -> list[tuple[float, float]]:
        if self.method == "lozo" and self.step_count % self.nu == 0:  # lazy V, as LoZO's step_interval
            for member in range(self.members):
                self.v[member] = {
                    n: self._normal((p.data.size(1), self.rank), p.data)
                    for n, p in self.named_parameters_to_optim if p.data.ndim >= 2
                }
        seeds = [int(self.rng.integers(1_000_000_000)) for _ in range(self.members)]
        losses, grads = [], []
        for member, seed in enumerate(seeds):
            self.perturb(seed, member, 1)
            loss1 = self.zo_forward()
            self.perturb(seed, member, -2)
            loss2 = self.zo_forward()
            self.perturb(seed, member, 1)
            grads.append((loss1 - loss2) / (2 * self.eps))
            losses.append((loss1, loss2))
        for member, (seed, g) in enumerate(zip(seeds, grads)):
            self.update(seed, member, g)
        self.step_count += 1
        return losses

    __call__ = step


# --- the device suite's torch side (bench/gpu.sh runs this in a process of its own) ----------
#
# Both frameworks reserve the accelerator's memory, so bench/run.py --device-suite runs this
# first, in a subprocess, before jax touches the device, and reads back the JSON it writes.


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_model(name: str, dtype: torch.dtype, device: str, attn_implementation: str = "sdpa"):
    """The Hugging Face model of a benchmark shape (``common.SHAPES``), random weights made on
    ``device``: timings do not depend on the values, and copying 26 GB of zojax weights through
    the host would cost minutes of device time."""
    from transformers import AutoModelForCausalLM

    from bench import common

    _, config = common.SHAPES[name]
    hf_config = config.to_hf()
    hf_config._attn_implementation = attn_implementation
    with torch.device(device):
        try:
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        except TypeError:  # transformers < 4.56 calls it torch_dtype
            model = AutoModelForCausalLM.from_config(hf_config, torch_dtype=dtype)
    return model.eval()


def forward_fn(model, batch, *, last_only: bool):
    """One eager forward of ``batch`` (all logits, or the last position's only), synchronised."""
    import inspect

    device = next(model.parameters()).device
    ids, mask, _, _ = (t.to(device) for t in torch_batch(batch))
    kw = {"use_cache": False}  # no KV cache to build: the favourable reading for torch
    if last_only:
        if "logits_to_keep" not in inspect.signature(model.forward).parameters:
            return None
        kw["logits_to_keep"] = 1

    @torch.no_grad()
    def run():
        model(input_ids=ids, attention_mask=mask, **kw)
        _sync(device)

    return run


def step_fn(zo: TorchZO):
    device = next(zo.model.parameters()).device

    def run():
        zo.step()
        _sync(device)  # the update's last kernels

    return run


def normal_fns(size: int, dtype: torch.dtype, device: str) -> dict:
    """``torch.normal`` alone, and as the official update uses it (seeded, then ``w.add_(z)``), on
    the same (rows, cols) matrix as bench/rng.py draws."""
    from bench.rng import _shape

    shape = _shape(size)
    dev = torch.device(device)
    w = torch.randn(shape, device=dev, dtype=dtype)

    def standalone():
        torch.normal(mean=0, std=1, size=shape, device=dev, dtype=dtype)
        _sync(dev)

    def update():
        torch.manual_seed(0)
        w.add_(torch.normal(mean=0, std=1, size=shape, device=dev, dtype=dtype), alpha=-1e-3 * 0.37)
        _sync(dev)

    return {"elements": shape[0] * shape[1], "shape": list(shape),
            "fns": {"normal": standalone, "update": update}}


def device_suite(name: str, *, batch_size: int, seq_len: int, members=(1,), reps: int = 3, warmup: int = 1,
                 rng_size: int = 1 << 27, dtype: str = "bfloat16", device: str | None = None,
                 log=print) -> dict:
    """The PyTorch numbers of bench/gpu.sh: eager HF forward of the 2·B sequences a K = 1 step
    scores (all logits / last logit), the official-style MeZO and LoZO steps, and ``torch.normal``."""
    from bench import common

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = getattr(torch, dtype)
    t0 = time.time()
    model = random_model(name, tdtype, device)
    out = {"model": name, "params": sum(p.numel() for p in model.parameters()), "dtype": dtype,
           "device": device, "batch_size": batch_size, "seq_len": seq_len, "versions": _versions(),
           "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        out["device_name"] = torch.cuda.get_device_name(torch.device(device))
    log(f"  [torch] {name} ({out['params'] / 1e9:.2f}B params, {dtype}, {device}) "
        f"built in {time.time() - t0:.1f}s")
    batch = common.make_batch(_Shape(common.SHAPES[name][1]), batch_size, seq_len)  # the batch zojax scores
    fns = {"forward_full": forward_fn(model, common.tile(batch, 2), last_only=False),
           "forward_last": forward_fn(model, common.tile(batch, 2), last_only=True)}
    fns = {k: f for k, f in fns.items() if f is not None}
    for k in members:
        for m in ("lozo", "mezo"):
            fns[f"{m}_k{k}"] = step_fn(TorchZO(model, batch, m, k))
    t = common.side_by_side(fns, reps=reps, warmup=warmup, log=log)
    out["forward"] = {"sequences": 2 * batch_size, **{k: t[k].median for k in t if k.startswith("forward")}}
    out["steps"] = {k: t[k].median for k in t if not k.startswith("forward")}
    out["timings"] = {k: v.as_dict() for k, v in t.items()}
    log("    " + "  ".join(f"{k} {v.median * 1e3:.1f} ms" for k, v in t.items()))
    del model, fns
    out["rng"] = _normal_throughput(rng_size, tdtype, device, reps, warmup, log)
    return out


class _Shape:
    """What :func:`common.make_batch` reads of a bundle (its config), without jax weights."""

    def __init__(self, config):
        self.config = config


def _normal_throughput(size, dtype, device, reps, warmup, log) -> dict:
    from bench import common

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    r = normal_fns(size, dtype, device)
    t = common.side_by_side(r["fns"], reps=reps, warmup=warmup)
    out = {"elements": r["elements"], "shape": r["shape"]}
    for k, v in t.items():
        out[f"{k}_s"] = v.median
        out[f"{k}_values_per_s"] = r["elements"] / v.median
    log(f"    torch.normal {out['normal_values_per_s'] / 1e9:.1f} G values/s alone, "
        f"{out['update_values_per_s'] / 1e9:.1f} G in an update")
    return out


def _versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="the PyTorch side of bench/gpu.sh (one process of its own)")
    ap.add_argument("--model", default="opt-13b")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=48)
    ap.add_argument("--members", default="1", help="comma-separated K values of the MeZO / LoZO steps")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rng-size", type=int, default=1 << 27)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--json", required=True)
    args = ap.parse_args(argv)
    log = lambda *a: print(*a, flush=True)  # noqa: E731 - the parent shows this process's log live
    res = device_suite(args.model, batch_size=args.batch, seq_len=args.seq,
                       members=tuple(int(k) for k in args.members.split(",")), reps=args.reps,
                       warmup=args.warmup, rng_size=args.rng_size, dtype=args.dtype, device=args.device,
                       log=log)
    Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
