"""A run of the trainer, piece by piece: building it from a config (:mod:`~zojax.run.build`),
evaluating (:mod:`~zojax.run.evaluate`), reporting (:mod:`~zojax.run.metrics`) and the weights it
hands on (:mod:`~zojax.run.export`). The loop that ties them is :func:`zojax.train.train`."""

from zojax.run.build import (
    Run,
    build_run,
    check_perturbation,
    icl_demonstrations,
    make_optimizer,
    make_spec,
    optimizer_name,
)
from zojax.run.evaluate import evaluate
from zojax.run.export import trained_params, weights
from zojax.run.metrics import MetricsWriter, peak_memory_mb, plot_curves

__all__ = [
    "Run",
    "build_run",
    "make_spec",
    "make_optimizer",
    "optimizer_name",
    "icl_demonstrations",
    "check_perturbation",
    "evaluate",
    "trained_params",
    "weights",
    "MetricsWriter",
    "plot_curves",
    "peak_memory_mb",
]
