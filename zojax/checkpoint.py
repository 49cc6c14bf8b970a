"""Checkpoints of a ZO run with orbax-checkpoint, and resume.

A checkpoint holds the trainable parameters, the optimiser state, the step (which is
also the data position: batches are a pure function of (data seed, step)), the run key
and the skipped-step counter. Orbax writes each checkpoint to a temporary directory and
renames it when complete, so a crash never leaves a half-written "latest" checkpoint;
a latest checkpoint that fails to restore anyway (e.g. corrupted on disk) is set aside
with a warning in favour of the previous one. A checkpoint that reads fine but holds
other arrays than the run expects (another scope, optimiser or model) is not damaged:
that is an error, and nothing on disk changes. Weights holding NaN or inf are never saved.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from zojax.errors import CheckpointMismatchError, CheckpointWriteError, NonFiniteError, TrainingError
from zojax.optim import ZOState
from zojax.optim.fused import all_finite as tree_all_finite

__all__ = [
    "Checkpointer", "CheckpointMismatchError", "CheckpointWriteError", "NonFiniteError", "TrainingError", "all_finite",
]

log = logging.getLogger(__name__)


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e`` (orbax wraps what its writer threads raise), if any."""
    while e is not None:
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


_finite = jax.jit(tree_all_finite)  # the step's own check, on the host's side of a checkpoint


def all_finite(tree) -> bool:
    """Whether every floating leaf of ``tree`` is free of NaN and inf."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return True
    # replicated scalar: process-local data is the value, also when the weights span several hosts
    return bool(np.asarray(_finite(leaves).addressable_data(0)))


def _signature(flat: dict) -> list[tuple[tuple[int, ...], str]]:
    arrays = [x for _, x in sorted(flat.items(), key=lambda kv: int(kv[0]))]
    return [(tuple(int(d) for d in x.shape), str(np.dtype(x.dtype))) for x in arrays]


def _first_difference(stored: list, expected: list) -> str:
    if len(stored) != len(expected):
        return f"{len(stored)} arrays stored, {len(expected)} expected"
    i = next(i for i, (a, b) in enumerate(zip(stored, expected)) if a != b)
    (s_shape, s_dtype), (e_shape, e_dtype) = stored[i], expected[i]
    return f"array {i} is {s_shape} {s_dtype}, expected {e_shape} {e_dtype}"


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

    def __init__(self, directory, keep: int | None = 3, *, writer: bool = False):
        """``keep``: checkpoints kept (None: all); ``writer``: this process writes the directory (it
        holds the run's lock) and removes the temporary directories a killed writer left."""
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=writer),
            # named handlers let a fresh process read a checkpoint's metadata before restoring it
            item_handlers={"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    def save(self, state: ZOState, meta: dict) -> None:
        """Write a checkpoint for ``state.step`` (blocking until it is committed).

        Raises :class:`NonFiniteError` (writing nothing) if the weights hold NaN or inf, so
        every checkpoint on disk is one a run can go on from."""
        if not all_finite(state.params):
            raise NonFiniteError(
                f"the weights at step {int(state.step)} hold NaN or inf; not checkpointed. The last good checkpoint "
                f"is {self.last_good()}. Lower optim.lr or zo.eps, or check the data."
            )
        tree = {
            "params": _flat(state.params),
            "opt_state": _flat(state.opt_state),
            "key": state.key,
            "step": state.step,
            "skipped": state.skipped,
        }
        step = int(state.step)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(dict(meta, step=step))),
                force=True,
            )
            self.manager.wait_until_finished()
        except Exception as e:
            cause = _os_error(e)
            if cause is None:
                raise
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {self.directory}: {cause.strerror or cause}; the last "
                f"good checkpoint is {self.last_good()}. Free space (or fix the directory) and resume with --resume"
            ) from e

    def delete(self, step: int) -> None:
        """Remove the checkpoint of ``step``."""
        self.manager.delete(step)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def last_good(self) -> str:
        """The newest checkpoint, for messages (every saved checkpoint holds finite weights)."""
        steps = self.steps()
        return f"step {steps[-1]} in {self.directory}" if steps else "none (no checkpoint was saved yet)"

    def restore_latest(self, template: ZOState) -> tuple[ZOState, dict] | None:
        """The newest checkpoint that restores, as ``(state, meta)``; ``None`` if there is none.

        ``template`` is a freshly initialised state of the same run (it supplies the
        structure and shapes). A damaged checkpoint is moved aside (``N.unreadable``) in favour
        of the previous one; one that holds other arrays than ``template`` raises
        :class:`CheckpointMismatchError` and changes nothing."""
        steps = self.steps()
        for i, step in enumerate(reversed(steps)):
            try:
                self._check_structure(step, template)
                return self._restore(step, template)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # noqa: BLE001 -- any other failure means this checkpoint is unusable
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

    def restore(self, step: int, template: ZOState) -> tuple[ZOState, dict]:
        """The checkpoint of ``step`` as ``(state, meta)`` (see :meth:`restore_latest` for ``template``)."""
        if step not in self.steps():
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory} (it holds {self.steps() or 'none'})")
        self._check_structure(step, template)
        return self._restore(step, template)

    def _check_structure(self, step: int, template: ZOState) -> None:
        """Compare the stored arrays' shapes and dtypes with the template's (reading metadata only)."""
        try:
            stored = self.manager.item_metadata(step)["state"]
            stored = getattr(stored, "tree", stored)  # TreeMetadata in recent orbax, a plain tree before
            stored["params"]
        except Exception:  # noqa: BLE001 -- unreadable metadata: the restore itself decides if it is damaged
            return
        for part in ("params", "opt_state"):
            # an empty optimiser state (zo_sgd) is stored as nothing at all
            have, want = _signature(stored.get(part) or {}), _signature(_flat(getattr(template, part)))
            if have != want:
                raise CheckpointMismatchError(
                    f"checkpoint {self.directory / str(step)} does not fit this run ({part}: "
                    f"{_first_difference(have, want)}): it was written under another model, zo or optim config; "
                    "nothing was changed"
                )

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
