"""The training-loop way: MeZO and LoZO steps as their official PyTorch implementations run them.

What the official code does (princeton-nlp/MeZO ``trainer.py``: ``zo_perturb_parameters``,
``zo_step``, ``zo_update``; optml-group/LoZO: ``lowrank_zo_perturb_parameters``,
``lowrank_zo_step``, ``lowrank_zo_update``), reproduced here on a Hugging Face
``*ForCausalLM`` (eval mode, ``torch.no_grad``, sdpa attention, every CPU thread):

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

import os
import re

import numpy as np
import torch

#: the seed paper's "lora-only" scope, on torch parameter names
LORA_NAMES = re.compile(r"(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|fc1|fc2)\.weight$")


def to_torch(bundle, attn_implementation: str = "sdpa"):
    """The Hugging Face torch model with exactly ``bundle``'s weights (float32, eval mode)."""
    from transformers import AutoModelForCausalLM

    import jax

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
        self.ids, self.mask, self.options, self.labels = torch_batch(batch)
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

    @torch.no_grad()
    def perturb(self, seed: int, member: int, scaling_factor: float):
        torch.manual_seed(seed)
        for name, param in self.named_parameters_to_optim:
            if self.method == "lozo" and param.data.ndim >= 2:
                u = torch.normal(mean=0, std=1, size=(param.data.size(0), self.rank), dtype=param.data.dtype)
                param.data.add_(u @ self.v[member][name].t(), alpha=scaling_factor * self.eps)
            else:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
                param.data.add_(z, alpha=scaling_factor * self.eps)

    @torch.no_grad()
    def update(self, seed: int, member: int, projected_grad: float):
        torch.manual_seed(seed)
        lr = self.lr / self.members
        for name, param in self.named_parameters_to_optim:
            if self.method == "lozo" and param.data.ndim >= 2:
                u = torch.normal(mean=0, std=1, size=(param.data.size(0), self.rank), dtype=param.data.dtype)
                z = u @ self.v[member][name].t()
            else:
                z = torch.normal(mean=0, std=1, size=param.data.size(), dtype=param.data.dtype)
            if self.wd and "bias" not in name and "norm" not in name:
                param.data.mul_(1 - self.lr * self.wd / self.members)
            param.data.add_(z, alpha=-lr * projected_grad)

    @torch.no_grad()
    def step(self) -> list[tuple[float, float]]:
        if self.method == "lozo" and self.step_count % self.nu == 0:  # lazy V, as LoZO's step_interval
            for member in range(self.members):
                self.v[member] = {
                    n: torch.normal(mean=0, std=1, size=(p.data.size(1), self.rank), dtype=p.data.dtype)
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
