"""The weights a run hands on: a state's full parameters, and a finished run's from its checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from zojax import accelerator, parallel, rundir
from zojax.checkpoint import Checkpointer
from zojax.optim import ZOState, effective_params, init
from zojax.run.build import Run
from zojax.scope import combine

__all__ = ["trained_params", "weights"]


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


_effective_params = accelerator.program(effective_params, static_argnums=0)


def weights(run: Run, state: ZOState, frozen) -> Any:
    """The full parameters a run's state stands for (any kept adapter update folded in)."""
    trainable = _effective_params(run.optimizer, state.params, state.opt_state, state.key, state.step)
    return combine(trainable, frozen)
