"""ZO gradients as a few bytes, optax-style transforms over them, and the fused step.

A :class:`ZOGrad` is ``(key, step, coeffs)`` plus the static noise kind: it stands for
``g = mean_k coeffs[k] * z_k`` without storing any ``z_k``. The package is layered as optax
is: :mod:`~zojax.optim.gradient` (the estimate), :mod:`~zojax.optim.transforms` (optimisers
over it), :mod:`~zojax.optim.scaled` (per-coordinate scales: HiZOO, Sparse MeZO),
:mod:`~zojax.optim.orthogonal` (ZO-Muon), :mod:`~zojax.optim.fused` (the fused, jitted step) and
:mod:`~zojax.optim.diagnostics` (baselines).
"""

from zojax.optim.diagnostics import compare_with_grad, forward_gradient
from zojax.optim.fused import CompiledStep, StepInfo, ZOState, init, make_step, run_steps, stack_batches, step
from zojax.optim.gradient import ZOGrad, dense_gradient
from zojax.optim.orthogonal import polar_from_factors, zo_muon
from zojax.optim.scaled import HiZOOState, SparseState, hizoo, magnitude_mask, sparse_mezo
from zojax.optim.transforms import (
    AdapterState,
    BoundedTransformation,
    LozoMState,
    ScheduleState,
    ZOTransformation,
    apply_update,
    densify,
    direction_scale,
    effective_params,
    fold,
    lozo_adapter,
    lozo_m,
    update_bound,
    weight_decay_mask,
    zo_sgd,
    zo_sgd_update,
)

__all__ = [
    "ZOGrad",
    "dense_gradient",
    "zo_sgd",
    "zo_sgd_update",
    "densify",
    "lozo_m",
    "lozo_adapter",
    "hizoo",
    "zo_muon",
    "polar_from_factors",
    "sparse_mezo",
    "magnitude_mask",
    "direction_scale",
    "HiZOOState",
    "SparseState",
    "ZOTransformation",
    "BoundedTransformation",
    "fold",
    "effective_params",
    "apply_update",
    "update_bound",
    "weight_decay_mask",
    "AdapterState",
    "LozoMState",
    "ScheduleState",
    "ZOState",
    "StepInfo",
    "init",
    "step",
    "run_steps",
    "stack_batches",
    "make_step",
    "CompiledStep",
    "forward_gradient",
    "compare_with_grad",
]
