"""Checkpoints of a ZO run with orbax-checkpoint, and resume.

A checkpoint holds the trainable parameters, the optimiser state, the step (which is
also the data position: batches are a pure function of (data seed, step)), the run key
and the skipped-step counter. Orbax writes each checkpoint to a temporary directory and
renames it when complete, so a crash never leaves a half-written "latest" checkpoint;
a latest checkpoint that fails to restore anyway (e.g. corrupted on disk) is skipped
with a warning in favour of the previous one.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from zojax.optim import ZOState

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)


def _flat(tree) -> dict[str, jax.Array]:
    # Index-keyed leaves: robust to None leaves (frozen weights) and NamedTuple states,
    # which the restore template rebuilds from a fresh init.
    return {str(i): x for i, x in enumerate(jax.tree.leaves(tree))}


def _unflat(flat: dict, template):
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise ValueError(f"checkpoint has {len(flat)} arrays, the run expects {len(leaves)}")
    out = []
    for i, ref in enumerate(leaves):
        x = flat[str(i)]
        if tuple(x.shape) != tuple(np.shape(ref)):
            raise ValueError(f"checkpoint array {i} has shape {tuple(x.shape)}, the run expects {tuple(np.shape(ref))}")
        out.append(x)
    return jax.tree.unflatten(treedef, out)


class Checkpointer:
    """Save and restore :class:`~zojax.optim.ZOState` under ``directory``, keeping the last few.

    >>> import jax.numpy as jnp, tempfile, zojax
    >>> state, _ = zojax.init({"w": jnp.ones(2)}, zojax.ZOSpec(), zojax.zo_sgd(0.1), jax.random.PRNGKey(0))
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2)
    >>> ckpt.save(state, {"note": "hi"})
    >>> restored, meta = ckpt.restore_latest(state)
    >>> int(restored.step), meta["note"]
    (0, 'hi')
    """

    def __init__(self, directory, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def save(self, state: ZOState, meta: dict) -> None:
        """Write a checkpoint for ``state.step`` (blocking until it is committed)."""
        tree = {
            "params": _flat(state.params),
            "opt_state": _flat(state.opt_state),
            "key": state.key,
            "step": state.step,
            "skipped": state.skipped,
        }
        step = int(state.step)
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(dict(meta, step=step))),
            force=True,
        )
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, template: ZOState) -> tuple[ZOState, dict] | None:
        """The newest checkpoint that restores, as ``(state, meta)``; ``None`` if there is none.

        ``template`` is a freshly initialised state of the same run (it supplies the
        structure and shapes)."""
        steps = self.steps()
        for i, step in enumerate(reversed(steps)):
            try:
                return self._restore(step, template)
            except Exception as e:  # noqa: BLE001 -- any failure means this checkpoint is unusable
                older = steps[-2 - i] if i + 1 < len(steps) else None
                # set aside (not deleted), so the resumed run can write this step again
                aside = self.directory / f"{step}.unreadable"
                (self.directory / str(step)).rename(aside)
                self.manager.reload()
                warnings.warn(
                    f"checkpoint {self.directory / str(step)} could not be restored ({type(e).__name__}: {e}); "
                    f"moved to {aside}; "
                    + (f"falling back to step {older}" if older is not None else "no older checkpoint left"),
                    stacklevel=2,
                )
        return None

    def _restore(self, step: int, template: ZOState) -> tuple[ZOState, dict]:
        abstract = {
            "params": _flat(template.params),
            "opt_state": _flat(template.opt_state),
            "key": template.key,
            "step": template.step,
            "skipped": template.skipped,
        }
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
        )
        tree = restored.state
        state = ZOState(
            params=_unflat(tree["params"], template.params),
            opt_state=_unflat(tree["opt_state"], template.opt_state),
            key=tree["key"],
            step=tree["step"],
            skipped=tree["skipped"],
        )
        return state, dict(restored.meta)

    def close(self) -> None:
        self.manager.close()
