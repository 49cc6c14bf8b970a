# ---
# jupyter:
#   # Source of notebooks/paper_reproduction.ipynb (jupytext percent format; see tools/README.md). Rebuild it with
#   # jupytext --update --to ipynb -o notebooks/paper_reproduction.ipynb tools/notebook_sources/paper_reproduction.py
#   accelerator: GPU
#   colab:
#     provenance: []
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   language_info:
#     name: python
# ---

# %% [markdown]
# # Reproducing the paper setups: OPT on SST-2 with LoZO and MeZO
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/paper_reproduction.ipynb) (OWNER/REPO: the repository this notebook lives in)
#
# The outputs saved with this notebook come from a CPU run in small mode (`ZOJAX_NOTEBOOK_SMALL=1`: the same
# cells with fewer steps and examples, as the test suite runs it); run it for full-size results.
#
# The seed paper ("LLM Zeroth-Order Fine-Tuning is an Inference Workload", Li & Ding, 2026) runs LoZO on
# OPT-13B / SST-2 as an inference workload and reports both accuracy and step time. zojax ships its setups
# as configs:
#
# | config | method | model | what the paper reports |
# |---|---|---|---|
# | `opt13b_sst2_lozo` | LoZO, rank 2, `V` refreshed every 100 steps, lora-only scope, lr 1e-7, eps 1e-3, batch 16, 20k steps | OPT-13B | 0.922 eval / 0.931 full-validation accuracy; 0.51 h vs 4.15 h for the official LoZO code |
# | `opt13b_sst2_mezo` | MeZO: dense Gaussian directions, all parameters | OPT-13B | 91.3 accuracy (as reported in the LoZO paper) |
# | `opt1.3b_sst2_factorized` | MeZO-style factorized high rank `Z = V Uᵀ/√r`, r = 128, 1000 steps | OPT-1.3B | 31.2 s vs 79.6 s for official MeZO, eval loss 0.725 vs 0.719 at step 1000 |
#
# The task follows MeZO: prompt `"<sentence> It was"`, verbalizers `" terrible"` / `" great"`, loss = cross
# entropy over the two options' log-likelihoods; 1000 training and 500 dev examples sampled from the SST-2
# training split with the data seed, evaluation on 1000 sampled validation examples (or all 872).
#
# This notebook shows how to run them on a GPU/TPU, what to expect, and — so that it runs anywhere, offline,
# in a minute — runs **the same pipeline** (the same configs, the same `train` function) on a tiny random OPT
# model and a tiny synthetic SST-2-style dataset.

# %%
import glob
import importlib.util
import os
import subprocess
import sys

# Install zojax, skipped when it is already importable. ZOJAX_SOURCE says where from (or set the environment
# variable of that name): a pip requirement such as "git+https://github.com/OWNER/REPO", the repository you opened
# this notebook from (on Colab: the OWNER/REPO after colab.research.google.com/github/ in the address bar).
# Left empty, the cell takes a zojax-*.whl uploaded next to the notebook (Colab: the Files pane), else the
# clone the notebook lives in, and otherwise stops and says what to do.
ZOJAX_SOURCE = os.environ.get("ZOJAX_SOURCE", "")


def zojax_source() -> list[str]:
    if ZOJAX_SOURCE:
        return [ZOJAX_SOURCE]
    wheels = sorted(glob.glob("zojax-*.whl") + glob.glob("/content/zojax-*.whl"))
    if wheels:
        return [wheels[-1]]
    if os.path.exists("../pyproject.toml"):  # notebooks/ of a clone
        return ["-e", ".."]
    raise RuntimeError(
        "zojax is not installed and this cell found nowhere to install it from: set ZOJAX_SOURCE above to "
        "'git+https://github.com/OWNER/REPO' (the repository this notebook came from), or upload a zojax wheel "
        "(built with `pip wheel . -w dist --no-deps` in a clone) next to this notebook, and run the cell again"
    )


if importlib.util.find_spec("zojax") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *zojax_source()])

# %%
import json
import shutil
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import zojax
from zojax.config import CONFIGS_DIR, load_config
from zojax.train import train

SMALL = os.environ.get("ZOJAX_NOTEBOOK_SMALL") == "1"  # the test suite's mode: fewer steps


CONFIGS = CONFIGS_DIR  # the configs shipped in the package (zojax configs lists them)
print(
    f"zojax {zojax.__version__} | JAX {jax.__version__} on {jax.default_backend()} x{jax.device_count()}"
    f" | configs: {CONFIGS} | small mode: {SMALL}"
)
print((CONFIGS / "opt13b_sst2_lozo.yaml").read_text())

# %% [markdown]
# ## Running the real setups on a GPU/TPU
#
# From a shell (the configs ship with zojax and are named by name; the model and SST-2 come from the
# Hugging Face hub):
#
# ```bash
# zojax train --config opt13b_sst2_lozo                       # LoZO, OPT-13B (bf16 weights: ~26 GB)
# zojax train --config opt13b_sst2_mezo                       # MeZO, OPT-13B
# zojax train --config opt1.3b_sst2_factorized                # factorized r=128, OPT-1.3B (fits a 16 GB GPU)
#
# # any key can be overridden, e.g. a shorter run or K = 4 directions per step:
# zojax train --config opt13b_sst2_lozo train.steps=2000 zo.members=4
# # shard the weights over 4 devices when one does not hold them:
# zojax train --config opt13b_sst2_lozo mesh.model=4
# # resume after an interruption, rebuild the weights from the seed log, export for transformers:
# zojax train --config opt13b_sst2_lozo --resume
# zojax replay --run runs/opt13b_sst2_lozo
# zojax export --run runs/opt13b_sst2_lozo --output opt13b-sst2-lozo
# ```
#
# Every run writes `runs/<name>/summary.json` (zero-shot and final accuracy, step time, peak memory),
# `metrics.jsonl`, `curves.png`, `seeds.jsonl` and checkpoints. The cell below does the same from Python: set
# `REAL_CONFIG` to one of the configs on a machine with a GPU/TPU and the hub within reach.

# %%
REAL_CONFIG = (
    None  # e.g. "opt1.3b_sst2_factorized" on a 16 GB GPU, "opt13b_sst2_lozo" on 40 GB+
)

if REAL_CONFIG is not None and not SMALL:
    real_summary = train(load_config(REAL_CONFIG))
    print(
        json.dumps(
            {
                k: real_summary[k]
                for k in (
                    "zero_shot_accuracy",
                    "final_accuracy",
                    "steps_per_second",
                    "wall_seconds",
                    "peak_memory_mb",
                )
            },
            indent=2,
        )
    )
else:
    print("REAL_CONFIG is not set: skipping the full-size run")

# %% [markdown]
# ## What to expect
#
# **Accuracy** on SST-2 after 20k steps, OPT-13B:
#
# | method | reported accuracy | source |
# |---|---|---|
# | LoZO, lora-only scope | 0.922 (1000 sampled validation examples), 0.931 (all 872) | seed paper |
# | LoZO | 91.7 | LoZO paper |
# | MeZO | 91.3 | LoZO paper |
# | MeZO-LoRA | 89.6 | LoZO paper |
# | full fine-tuning (backprop) | 91.8 | LoZO paper |
#
# ZO accuracy rises slowly — lr 1e-7 with one direction per step — and is noisy between evaluations; the
# zero-shot accuracy of OPT-13B with this prompt is already well above chance.
#
# **Step time**, OPT-13B, LoZO, one GPU (seconds per step):
#
# | batch size | 16 | 32 | 64 | 128 |
# |---|---|---|---|---|
# | official LoZO code | 0.630 | 0.732 | 0.959 | 1.458 |
# | seed paper (inference engine) | 0.088 | 0.123 | 0.205 | 0.367 |
#
# Across OPT-1.3B … 13B the seed paper reports 2.34x–7.72x speed-ups over the official code (largest for big
# models at small batch); in the official code about 89% of the time is scoring, 6% the update.
#
# **zojax** on these setups: `bench/gpu.sh` measures the OPT-13B-shaped LoZO, factorized and MeZO steps on one
# accelerator against the same forward and against the official-style PyTorch loops, and writes
# `bench/results/gpu.json`; the CPU measurements (step against inference, speed-up over the PyTorch loop, memory)
# are in `docs/benchmarks.md` of the repository.

# %% [markdown]
# ## The same pipeline, small: a tiny random OPT on a synthetic SST-2
#
# To run everything offline on a CPU we keep the configs and replace only what needs a GPU and the network:
# the model (a 2-layer OPT with random weights, saved as a Hugging Face directory with a word-level tokenizer)
# and the data (a JSONL file of SST-2-style sentences whose sentiment words decide the label). The overrides
# also shorten the run and raise the learning rate: a random tiny model learns nothing at lr 1e-7.

# %%
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from zojax.models import opt, save_pretrained

WORK = Path("runs/paper_small")
POSITIVE = [
    "wonderful",
    "delightful",
    "great",
    "fun",
    "moving",
    "charming",
    "superb",
    "brilliant",
    "gripping",
    "witty",
]
NEGATIVE = ["boring", "awful", "dull", "mess", "tedious", "clumsy", "bland", "terrible", "lifeless", "stale"]
FILLER = ["the", "film", "was", "a", "plot", "and", "story", "with", "actors", "it", "this", "movie", "is"]

# a word-level tokenizer; "It was" + " great" / " terrible" are single tokens, as with OPT's BPE
words = sorted(set(POSITIVE + NEGATIVE + FILLER + ["It", "was", "."]))
vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
word_level.pre_tokenizer = pre_tokenizers.Whitespace()
tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", bos_token="</s>", eos_token="</s>"
)

# a tiny OPT: the same zojax.models.opt.Model as OPT-13B, with 2 layers of width 32
tiny = opt.Config(
    vocab_size=len(vocab),
    hidden_size=32,
    ffn_dim=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=32,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=1,
)
model_dir = save_pretrained(
    opt.Model(tiny, rngs=nnx.Rngs(0)), tiny, WORK / "tiny-opt", tokenizer, overwrite=True
)

# SST-2-style data: the label is the sentiment of the two opinion words among the filler
rng = np.random.default_rng(0)
rows = []
for _ in range(600):
    label = int(rng.integers(2))
    sentence = list(rng.choice(FILLER, 4)) + list(rng.choice(POSITIVE if label else NEGATIVE, 2))
    rng.shuffle(sentence)
    rows.append({"sentence": " ".join(sentence) + " .", "label": label})
data_file = WORK / "sst2_synthetic.jsonl"
data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"model: {model_dir}\ndata:  {data_file} ({len(rows)} rows), e.g. {rows[0]}")

# %% [markdown]
# Now the paper configs with overrides — exactly what `zojax train --config ... key=value ...` does. The
# LoZO, MeZO and factorized runs share the model, the data and the step budget.

# %%
steps = 20 if SMALL else 400
SMALL_OVERRIDES = [
    f"model.name={model_dir}",
    "model.dtype=float32",
    "model.param_dtype=float32",
    f"task.source={data_file}",
    "task.num_train=400",
    "task.num_dev=100",
    "task.num_test=100",
    "task.max_length=16",
    "zo.eps=1e-2",
    "zo.members=4",
    "optim.lr=2e-2",
    f"train.steps={steps}",
    f"train.steps_per_call={steps // 2 if SMALL else steps // 10}",
    f"train.eval_every={steps // 2}",
    f"train.checkpoint_every={steps // 2}",
    "train.progress=false",
]
PER_CONFIG = {  # what each config needs at this scale
    "opt13b_sst2_lozo": ["zo.refresh_every=10"],
    "opt13b_sst2_mezo": ["optim.lr=1e-2"],
    "opt1.3b_sst2_factorized": ["zo.rank=8", "optim.lr=2e-3"],  # r=128 exceeds the tiny model's width of 32
}
if SMALL:  # the test suite runs the main setup only (each config compiles its own programs)
    PER_CONFIG = {"opt13b_sst2_lozo": PER_CONFIG["opt13b_sst2_lozo"]}
summaries = {}
for name, extra in PER_CONFIG.items():
    cfg = load_config(CONFIGS / f"{name}.yaml", SMALL_OVERRIDES + extra + [f"train.output_dir={WORK / name}"])
    print(f"--- {name}: {cfg.zo.method}, scope {cfg.zo.scope}, adapter path {cfg.zo.adapter}")
    shutil.rmtree(cfg.train.output_dir, ignore_errors=True)  # a fresh run each time the cell runs
    summaries[name] = train(cfg)

print(f"\n{'config':<26} {'zero-shot':>9} {'final':>6} {'steps/s':>8}")
for name, s in summaries.items():
    print(
        f"{name:<26} {s['zero_shot_accuracy']:>9.3f} {s['final_accuracy']:>6.3f} {s['steps_per_second']:>8.1f}"
    )

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in summaries:
    records = [json.loads(line) for line in (WORK / name / "metrics.jsonl").read_text().splitlines()]
    pts = [r for r in records if r["kind"] == "train"]
    ax.plot([r["step"] for r in pts], [r["loss"] for r in pts], "o-", ms=3, label=name)
ax.set(xlabel="step", ylabel="train loss", title="tiny OPT, synthetic SST-2")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# On a random 2-layer model these numbers only show that the pipeline runs; they say nothing about OPT-13B.
# Still, the ordering is the expected one: with the same number of steps LoZO's rank-2 directions on the
# projection weights move fastest, while MeZO's dense directions over *every* weight (embeddings included)
# make a noisier estimate — the variance of a ZO gradient grows with the number of parameters it perturbs,
# which is why LoZO and the lora-only scope exist.
#
# The seed log makes each run replayable: `zojax replay` rebuilds the trained weights from the base model and
# `seeds.jsonl` alone and checks them against the last checkpoint, bit for bit.

# %%
from zojax.cli import main as zojax_cli

assert zojax_cli(["replay", "--run", str(WORK / "opt13b_sst2_lozo")]) == 0
