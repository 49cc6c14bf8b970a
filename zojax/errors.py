"""zojax's errors, at the bottom of the house: every module raises from here.

A :class:`UserError` is something the user asked for that zojax refuses (a bad config, model,
data, mesh, seed log or run directory): the command line prints it as one line naming the culprit
and exits with code 2, without a traceback. Each also derives from the built-in exception a caller
would expect (``ValueError``, ``KeyError``, ``RuntimeError``). A :class:`TrainingError` is a run
that cannot go on; it is not the user's input, so it keeps its traceback.

>>> issubclass(MeshError, UserError) and issubclass(MeshError, ValueError)
True
"""

from __future__ import annotations

__all__ = [
    "UserError",
    "ConfigError",
    "DataError",
    "DataKeyError",
    "MissingColumnsError",
    "HubError",
    "LoadError",
    "DeltaError",
    "MeshError",
    "GenerateError",
    "SeedLogError",
    "RunDirError",
    "ResolutionError",
    "CheckpointMismatchError",
    "TrainingError",
    "NonFiniteError",
    "CheckpointWriteError",
]


class UserError(Exception):
    """Something the user asked for that zojax refuses (bad config, model, data or run directory).

    The command line prints it as one line and exits with code 2, without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration file or override that does not validate."""


class DataError(UserError, ValueError):
    """Data that cannot be used as asked (bad file, rows, labels or split sizes), naming the culprit."""


class DataKeyError(UserError, KeyError):
    """An unknown task, split or column (a KeyError whose message prints unquoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class MissingColumnsError(DataKeyError):
    """A source lacks columns the template needs."""


class HubError(UserError, RuntimeError):
    """The Hugging Face hub could not provide a dataset (offline, no such dataset, ...)."""


class LoadError(UserError, ValueError):
    """A checkpoint could not be loaded (missing/unknown/mis-shaped tensors, bad files, ...)."""


class DeltaError(UserError, ValueError):
    """A delta that cannot be applied: not a delta file, or made for other base weights or leaves."""


class MeshError(UserError, ValueError):
    """A mesh that does not fit the devices or the population."""


class GenerateError(UserError, ValueError):
    """Generation arguments the model cannot honour (empty prompt, bad sampling options, too many tokens)."""


class SeedLogError(UserError, ValueError):
    """A seed log (or another run log) that is damaged or does not match the run's checkpoint."""


class RunDirError(UserError, ValueError):
    """A command that would destroy or corrupt a run directory."""


class ResolutionError(UserError, ValueError):
    """A trainable leaf whose perturbation does not survive the dtype the model computes it with
    (:func:`zojax.precision.check_resolution`)."""


class CheckpointMismatchError(UserError, ValueError):
    """A readable checkpoint whose arrays differ from the run's: it was written under another config."""


class TrainingError(RuntimeError):
    """A run that cannot continue (e.g. too many consecutive non-finite losses)."""


class NonFiniteError(TrainingError):
    """Weights holding NaN or inf, which are never checkpointed."""


class CheckpointWriteError(TrainingError):
    """A checkpoint the file system would not take (a full disk, a quota, a read-only directory)."""
