"""zojax: zeroth-order fine-tuning of language models as one compiled inference program.

The engine works with any pure ``loss_fn(params, batch) -> scalar`` over a pytree:

>>> import jax, jax.numpy as jnp, zojax
>>> loss = lambda p, b: jnp.mean((b["x"] @ p["w"] - b["y"]) ** 2)
>>> spec = zojax.ZOSpec(noise=zojax.Gaussian(), eps=1e-3, members=8)
>>> opt = zojax.zo_sgd(0.05)
>>> state, frozen = zojax.init({"w": jnp.zeros(4)}, spec, opt, jax.random.PRNGKey(0))
>>> batch = {"x": jnp.eye(4), "y": jnp.arange(4.0)}
>>> state, info = zojax.step(state, frozen, batch, loss_fn=loss, spec=spec, optimizer=opt)
>>> info.losses.shape
(8, 2)
"""

from zojax import directions, estimators, nn, nnx, paths, random, scope
from zojax.directions import Factorized, Gaussian, LowRank, Rademacher, draw_directions
from zojax.estimators import centered_rank, fzoo, one_sided, shaped, sign, two_sided, zscore
from zojax.fo import fo_step, make_fo_step
from zojax.optim import (
    StepInfo,
    ZOGrad,
    ZOState,
    ZOTransformation,
    compare_with_grad,
    dense_gradient,
    densify,
    effective_params,
    forward_gradient,
    hizoo,
    init,
    lozo_adapter,
    lozo_m,
    make_step,
    run_steps,
    sparse_mezo,
    stack_batches,
    step,
    zo_muon,
    zo_sgd,
)
from zojax.scope import combine, partition, trainable_mask
from zojax.scoring import ZOSpec, score
from zojax.seedlog import SeedLog, replay

__version__ = "0.1.0"

__all__ = [
    "estimators",
    "nn",
    "nnx",
    "directions",
    "paths",
    "scope",
    "random",
    "Gaussian",
    "Rademacher",
    "LowRank",
    "Factorized",
    "ZOSpec",
    "score",
    "partition",
    "combine",
    "trainable_mask",
    "draw_directions",
    "two_sided",
    "one_sided",
    "fzoo",
    "sign",
    "zscore",
    "centered_rank",
    "shaped",
    "ZOGrad",
    "ZOState",
    "StepInfo",
    "zo_sgd",
    "densify",
    "dense_gradient",
    "lozo_m",
    "lozo_adapter",
    "hizoo",
    "sparse_mezo",
    "zo_muon",
    "ZOTransformation",
    "effective_params",
    "init",
    "step",
    "run_steps",
    "stack_batches",
    "make_step",
    "forward_gradient",
    "compare_with_grad",
    "fo_step",
    "make_fo_step",
    "SeedLog",
    "replay",
]
