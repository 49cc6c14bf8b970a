"""The fine-tuning pipeline: model + task + ZO method -> fused steps, evaluation, logs, checkpoints.

``train(config)`` runs a whole job: the loop. The run it drives is built, evaluated, reported
and exported by :mod:`zojax.run`. Steps are fused ``train.steps_per_call`` at a time into
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
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from zojax import accelerator, parallel, rundir, tasks
from zojax.checkpoint import Checkpointer
from zojax.config import RunConfig
from zojax.errors import TrainingError
from zojax.files import write_atomic
from zojax.optim import ZOState, init
from zojax.run import (
    MetricsWriter,
    Run,
    build_run,
    check_perturbation,
    evaluate,
    peak_memory_mb,
    plot_curves,
    weights,
)
from zojax.run import reward as reward_task
from zojax.seedlog import SeedLog

__all__ = ["train", "TrainingError"]

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
    writer: MetricsWriter | None = None
    train_seconds: float = 0.0
    steps_done: int = 0  # in this process (a resumed run counts from its checkpoint)

    @property
    def is_main(self) -> bool:
        return parallel.is_main_process()

    @property
    def first_order(self) -> bool:
        return self.run.cfg.zo.method == "fo"

    def save(self) -> None:
        t = self.run.cfg.train
        self.meta.update(data_position=int(self.state.step), seed=t.seed, data_seed=self.run.cfg.task.data_seed)
        if self.is_main and not self.first_order:  # a first-order step is no seed: its checkpoints are the record
            self.seed_log.save(self.run_dir / "seeds.jsonl")
        self.ckpt.save(self.state, self.meta)
        if self.best is not None:  # only now: until this checkpoint is committed, a resume needs the older best
            _prune_best(self)


def train(cfg: RunConfig, *, resume: bool = False, model=None, echo=print) -> dict:
    """Fine-tune as ``cfg`` says; returns the summary (also written to summary.json)."""
    if jax.process_index() != 0:  # only process 0 reports
        def echo(*args, **kwargs):
            return None
    rundir.check_train_dir(cfg, resume)  # before anything is written: a refused run changes nothing
    lock = rundir.RunLock(cfg.train.output_dir, echo) if parallel.is_main_process() else None
    if lock is not None:
        lock.acquire()
    try:
        rundir.check_train_dir(cfg, resume)  # again under the lock: another run may have written it meanwhile
        return _train_locked(cfg, resume, model, echo)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(cfg: RunConfig, resume: bool, model, echo) -> dict:
    started = time.time()
    job = _setup(cfg, model, echo)
    try:
        if resume:
            _resume(job)
        run_dir = job.run_dir
        if job.is_main:  # only now: the config may have changed only in what a resume allows
            write_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        job.writer = MetricsWriter(run_dir, int(job.state.step) if resume else None, cfg.train.tensorboard,
                                   cfg.train.wandb, cfg.model_dump())
        _zero_shot(job)
        _loop(job)
        return _finish(job, started)
    finally:
        if job.writer is not None:
            job.writer.close()
        job.ckpt.close()
        if job.best is not None:
            job.best.close()


def _setup(cfg: RunConfig, model, echo) -> _Job:
    """Model, data, compiled step and a fresh state (also the template a checkpoint restores into)."""
    run = build_run(cfg, model=model)
    key = jax.random.PRNGKey(cfg.train.seed)
    state, frozen = init(jax.tree.map(jnp.copy, run.params), run.spec, run.optimizer, key)
    if cfg.zo.method != "fo":  # first-order: no perturbation to resolve
        check_perturbation(run, state.params)
    state, frozen = parallel.shard_run(state, frozen, run.mesh, run.rules)
    run_dir = Path(cfg.train.output_dir)
    return _Job(
        run=run,
        state=state,
        frozen=frozen,
        ckpt=Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints, writer=True),
        # every best state is kept until a regular checkpoint records a newer one (see _prune_best)
        best=Checkpointer(run_dir / "best", keep=None, writer=True) if cfg.train.keep_best else None,
        seed_log=SeedLog.new(key, run.spec, run.params, config=cfg.model_dump()),
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
        _prune_best(job)
        return
    state, meta = restored
    step, t = int(state.step), job.run.cfg.train
    if step > t.steps:
        raise rundir.RunDirError(
            f"the run in {job.run_dir} is at step {step}, past train.steps={t.steps}: a run cannot go back; "
            f"resume with train.steps >= {step}, or export the run as it is (zojax export --run {job.run_dir})"
        )
    job.state, job.meta = state, meta
    if not job.first_order:  # a first-order run keeps no seed log
        job.seed_log = SeedLog.for_resume(job.run_dir / "seeds.jsonl", step)
    _prune_best(job)
    job.echo(f"resumed from step {step}")


def _prune_best(job: _Job) -> None:
    """Leave in ``best/`` only the state the last regular checkpoint chose (``meta["best"]``).

    ``best/N`` is written before the checkpoint that records it, and older best states are deleted
    only after it: whatever a kill interrupts, the checkpoint a resume reads names a state ``best/``
    holds, and states saved after that checkpoint (which the resumed run recomputes) are dropped."""
    if job.best is None:
        return
    chosen = (job.meta.get("best") or {}).get("step")
    for step in job.best.steps():
        if step != chosen:
            job.best.delete(step)
    if chosen is None or chosen in job.best.steps():
        return
    if chosen != int(job.state.step):
        raise rundir.RunDirError(
            f"{job.best.directory} lacks step {chosen}, the best dev state its checkpoint of step "
            f"{int(job.state.step)} records, so the run could not hand on its best state; start a new run in "
            "another train.output_dir"
        )
    job.best.save(job.state, job.meta)  # the checkpoint holds that very state


def _zero_shot(job: _Job) -> None:
    """The base model's test metrics, once per run (a resumed run has them in its checkpoint)."""
    assert job.writer is not None  # set by train()
    if "zero_shot_accuracy" in job.meta:
        return
    zero = evaluate(job.run, job.run.params, "test", job.run.cfg.train.eval_examples)
    job.meta["zero_shot_accuracy"] = zero.get("accuracy")
    job.meta["zero_shot_loss"] = zero["loss"]
    if "reward" in zero:  # a reward task: accuracy is the share of completions the verifier accepts
        job.meta["zero_shot_reward"] = zero["reward"]
    job.writer.write({"kind": "eval", "split": "test", "step": 0, **zero})
    job.echo(f"zero-shot test accuracy: {_fmt(zero.get('accuracy'))} (loss {zero['loss']:.4f}, {zero['examples']} examples)")


def _loop(job: _Job) -> None:
    """Fused calls from the state's step to ``train.steps`` (or ``stop_after``): log, evaluate, checkpoint."""
    assert job.writer is not None  # set by train()
    run, cfg = job.run, job.run.cfg
    t = cfg.train
    step = int(job.state.step)
    if t.stop_after is not None and t.stop_after <= step < t.steps:
        job.echo(f"the run is at step {step}: train.stop_after={t.stop_after} is reached already, nothing to train")
        return
    progress = None
    if t.progress and job.is_main:
        from tqdm.auto import tqdm

        progress = tqdm(total=t.steps, initial=int(job.state.step), unit="step", dynamic_ncols=True)
    consecutive_skips = consecutive_zero = 0
    for boundary in _boundaries(cfg):
        if boundary <= step:
            continue
        n = boundary - step
        if run.reward is not None:
            batches = reward_task.train_batches(run.reward.train_set, cfg.task.data_seed, step, n, t.batch_size)
        else:
            train_set = run.split("train")
            batches = tasks.train_batches(train_set, cfg.task.data_seed, step, n, t.batch_size, seq_len=train_set.seq_len)
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
        consecutive_zero = _check_signal(job, np.asarray(info.coeffs), applied, consecutive_zero, step)
        finite = losses[applied] if applied.any() else np.array([np.nan])
        skipped = int(job.state.skipped)
        record = {"kind": "train", "step": step, "loss": float(finite.mean()), "steps_per_second": n / elapsed,
                  "skipped": skipped}
        if run.reward is not None:
            record.update(reward_task.step_rewards(run, weights(run, job.state, job.frozen), batches, losses))
        job.writer.write(record)
        if progress is not None:
            progress.update(n)
            shown: dict[str, object] = {"loss": f"{record['loss']:.4f}"}
            if "reward_mean" in record:
                shown["reward"] = f"{record['reward_mean']:.3f}"
            progress.set_postfix(shown, skipped=skipped)
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


def _check_signal(job: _Job, coeffs: np.ndarray, applied: np.ndarray, consecutive: int, step: int) -> int:
    """Count consecutive applied steps whose coefficients are all exactly 0 (skipped steps neither
    count nor reset) and stop the run at ``train.max_zero_signal_steps``: no signal is not training.
    Not for reward tasks: a population whose members all score the same reward is common there."""
    limit = job.run.cfg.train.max_zero_signal_steps
    if job.first_order or limit is None or job.run.reward is not None:
        return 0
    for row, ok in zip(coeffs.reshape(len(applied), -1), applied):
        if ok:
            consecutive = consecutive + 1 if not np.any(row) else 0
        if consecutive >= limit:
            z = job.run.cfg.zo
            raise TrainingError(
                f"{consecutive} consecutive steps had coefficients all exactly 0 (up to step {step}): the perturbation "
                f"does not reach the loss, so nothing is trained; stopping. The last good checkpoint is "
                f"{job.ckpt.last_good()}. Raise zo.eps (now {z.eps:g}), use model.dtype=float32, or set "
                "train.max_zero_signal_steps=null for an objective that is often flat"
            )
    return consecutive


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
        if "reward" in final:
            summary.update(zero_shot_reward=meta.get("zero_shot_reward"), final_reward=final["reward"])
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
        peak_memory_mb=peak_memory_mb(),
        devices=[str(d) for d in jax.devices()],
        compute_dtype=accelerator.resolve_dtype(cfg.model.dtype),
        xla_options=accelerator.xla_options(),
        **run.data_info,
        config=cfg.model_dump(),
    )
    if job.is_main:
        plot_curves(job.writer.records(), job.run_dir / "curves.png")
        write_atomic(job.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

