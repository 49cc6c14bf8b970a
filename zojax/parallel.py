"""Device meshes: population sharding, model sharding and multi-host runs, on JAX's own SPMD.

A zojax mesh has two named axes:

* ``pop`` -- the population: each device scores its share of the K members (both signs).
  The base weights are replicated over ``pop`` (never copied per member), directions are
  regenerated on each device from the same keys, and the only thing that crosses ``pop``
  in a step is the ``(K, 2)`` array of losses. Every device then applies the same update.
* ``model`` -- tensor parallelism for models that do not fit one device: kernels, biases
  and embeddings are sharded by parameter-path rules (:data:`DEFAULT_RULES`) and GSPMD
  inserts the collectives (all within a ``model`` group).

Results do not depend on the mesh: a direction is a pure function of (key, step, member,
leaf path) and threefry keys are partitionable, so 1 device, ``pop=8`` and
``pop=4, model=2`` give the same losses and parameters up to float rounding.

>>> mesh = make_mesh(1, 1)
>>> dict(mesh.shape)
{'pop': 1, 'model': 1}
>>> two = jax.sharding.AbstractMesh((4, 2), (POP, MODEL))  # the shape of an 8-device mesh
>>> param_spec("layers/mlp/down_proj/kernel", (2, 64, 32), two)  # row-parallel: d_in
P(None, 'model', None)
>>> param_spec("layers/self_attn/q_proj/kernel", (2, 32, 32), two)  # column-parallel: d_out
P(None, None, 'model')

Multi-host: call :func:`initialize` (the CLI does, from ``--coordinator`` /
``--num-processes`` / ``--process-id`` or ``JAX_COORDINATOR_ADDRESS`` /
``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``) before anything touches a device. Every
process then loads the model and data itself (batches are a pure function of the data
seed and the step) and :func:`shard` turns its host-local full copy into global arrays.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from zojax.errors import MeshError
from zojax.layout import HF_PROJECTIONS
from zojax.paths import path_str
from zojax.types import PyTree

__all__ = [
    "DEFAULT_RULES",
    "MODEL",
    "POP",
    "MeshError",
    "check_population",
    "constrain",
    "initialize",
    "is_main_process",
    "make_mesh",
    "mesh_from_config",
    "model_size",
    "over_population",
    "param_shardings",
    "param_spec",
    "pop_size",
    "replicate",
    "replicated",
    "shard",
    "shard_run",
    "state_shardings",
]

log = logging.getLogger(__name__)

POP = "pop"
MODEL = "model"

#: ``(regex on the leaf path, axis)``: the first match shards that axis (counted from the
#: end, so a stacked layer axis in front does not matter) over ``model``. Megatron-style
#: tensor parallelism (:class:`zojax.layout.Projections`): column-parallel projections on
#: d_out, row-parallel ones on d_in, token embeddings and the LM head on the vocabulary.
#: Leaves that match no rule (norms, row-parallel biases, position embeddings) are
#: replicated. These are the rules for Hugging Face's names; a model family declares its own
#: (``zojax.models.sharding_rules``).
DEFAULT_RULES: tuple[tuple[str, int], ...] = HF_PROJECTIONS.sharding_rules


# --- meshes --------------------------------------------------------------------------------


def _resolve(pop: int, model: int, n: int) -> tuple[int, int]:
    for name, v in (("pop", pop), ("model", model)):
        if not isinstance(v, (int, np.integer)) or (v < 1 and v != -1):
            raise MeshError(
                f"mesh.{name} must be a positive integer or -1 (the rest of the devices), got {v!r}"
            )
    if pop == -1 and model == -1:
        raise MeshError("at most one of mesh.pop and mesh.model may be -1")
    if pop == -1 or model == -1:
        known = model if pop == -1 else pop
        if n % known:
            raise MeshError(
                f"mesh pop={pop}, model={model}: {known} does not divide the {n} devices, so -1 has no value"
            )
        return (n // known, model) if pop == -1 else (pop, n // known)
    return int(pop), int(model)


def make_mesh(pop: int = 1, model: int = 1, devices: Sequence | None = None) -> Mesh:
    """A ``(pop, model)`` mesh; ``-1`` on one axis takes the rest of the devices.

    ``pop * model`` must divide the number of devices (default: all of ``jax.devices()``);
    a smaller mesh uses the first ``pop * model`` of them (single-process only).

    >>> make_mesh(3, 1, jax.devices() * 4)
    Traceback (most recent call last):
    ...
    zojax.errors.MeshError: mesh pop=3 x model=1 = 3 devices does not divide the 4 devices available; choose sizes whose product divides the device count (-1 on one axis takes the rest)
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    pop, model = _resolve(pop, model, n)
    size = pop * model
    if n % size:
        raise MeshError(
            f"mesh pop={pop} x model={model} = {size} devices does not divide the {n} devices available; "
            "choose sizes whose product divides the device count (-1 on one axis takes the rest)"
        )
    if size < n:
        if jax.process_count() > 1:
            raise MeshError(
                f"mesh pop={pop} x model={model} uses {size} of {n} devices; a multi-process run must use "
                "all devices (set mesh.pop=-1 or mesh.model=-1)"
            )
        log.warning("mesh pop=%d x model=%d uses %d of the %d devices", pop, model, size, n)
        devices = devices[:size]
    return jax.make_mesh((pop, model), (POP, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices)


def mesh_from_config(mesh_cfg, members: int | None = None) -> Mesh | None:
    """The mesh of a run config's ``mesh: {pop, model}`` section, validated against K.

    ``None`` (today's single-device behaviour) when the mesh is a single device in a
    single process."""
    n = jax.device_count()
    pop, model = _resolve(mesh_cfg.pop, mesh_cfg.model, n)
    if pop * model == 1 and jax.process_count() == 1:
        return None
    mesh = make_mesh(pop, model)
    if members is not None:
        check_population(mesh, members)
    return mesh


def pop_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.shape.get(POP, 1))


def model_size(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(mesh.shape.get(MODEL, 1))


def check_population(mesh: Mesh | None, members: int) -> None:
    """Raise :class:`MeshError` unless the ``pop`` axis divides K.

    >>> check_population(make_mesh(1, 1), 3)
    """
    p = pop_size(mesh)
    if members % p:
        raise MeshError(
            f"the population axis of the mesh (pop={p}) does not divide the number of members K={members}: "
            f"every device scores K/pop members; use zo.members a multiple of {p} or a different mesh.pop"
        )


# --- shardings by parameter path -------------------------------------------------------------


def over_population(fn, mesh: Mesh, members: jax.Array, *shared):
    """``fn(members, *shared)`` with ``members`` split over the mesh's ``pop`` axis (``jax.shard_map``):
    each device evaluates its ``K / pop`` members against the same ``shared`` arguments, and the
    per-member results (the K x 2 losses: all that crosses ``pop``) are gathered on every device.

    A ``model`` axis of more than one device stays automatic (GSPMD partitions the weights and
    inserts the collectives); of one device, it is made manual too, since a host callback inside
    ``fn`` (a reward computed by Python) is accepted only when every mesh axis is manual."""
    P = PartitionSpec
    manual = {POP} if model_size(mesh) > 1 else set(mesh.axis_names)
    sharded = jax.shard_map(fn, mesh=mesh, in_specs=(P(POP),) + (P(),) * len(shared), out_specs=P(POP),
                            axis_names=manual, check_vma=False)
    return jax.lax.with_sharding_constraint(sharded(members, *shared), replicated(mesh))


def param_spec(path: str, shape, mesh: Mesh, rules=DEFAULT_RULES) -> PartitionSpec:
    """The PartitionSpec of one parameter: the first matching rule's axis over ``model``.

    A dimension the ``model`` axis does not divide stays replicated.
    """
    m = model_size(mesh)
    ndim = len(shape)
    if m > 1:
        for pattern, axis in rules:
            if re.search(pattern, path) and -ndim <= axis < ndim:
                axis %= ndim
                if shape[axis] % m == 0:
                    spec: list[str | None] = [None] * ndim
                    spec[axis] = MODEL
                    return PartitionSpec(*spec)
                log.debug("%s %s: dim %d not divisible by model=%d; replicated", path, shape, axis, m)
                break
    return PartitionSpec(*([None] * ndim))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(params: PyTree, mesh: Mesh, rules=DEFAULT_RULES) -> PyTree:
    """NamedShardings for a parameter pytree (arrays, tracers or ShapeDtypeStructs; None kept).

    Replicated over ``pop``; sharded over ``model`` by ``rules``."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, param_spec(path_str(p), np.shape(x), mesh, rules)), params
    )


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """Shardings for a :class:`~zojax.optim.ZOState`.

    Parameters by ``rules``; an optimiser-state leaf whose path ends with a parameter's path
    and has its shape (adam moments, ...) is sharded like that parameter; everything else
    (counters, factored momentum, the key, the step) is replicated."""
    params = param_shardings(state.params, mesh, rules)
    by_path = {}
    for (p, x), s in zip(
        jax.tree_util.tree_flatten_with_path(state.params)[0], jax.tree.leaves(params), strict=True
    ):
        by_path[path_str(p)] = (tuple(np.shape(x)), s)
    rep = replicated(mesh)

    def opt_leaf(p, x):
        path = path_str(p)
        for suffix, (shape, s) in by_path.items():
            if (path == suffix or path.endswith("/" + suffix)) and tuple(np.shape(x)) == shape:
                return s
        return rep

    opt = jax.tree_util.tree_map_with_path(opt_leaf, state.opt_state)
    return type(state)(params, opt, rep, rep, rep)


# --- placing and constraining ------------------------------------------------------------------


def _put(x, sharding: NamedSharding):
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)  # already global: reshard
    # multi-host: every process holds the full value (same model, same data); each one
    # contributes the shards of its own devices
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard(tree: PyTree, shardings: PyTree) -> PyTree:
    """Place a pytree of full (host-local) values with ``shardings`` (None leaves kept).

    Works in multi-process runs: each process passes its own full copy."""
    return jax.tree.map(_put, tree, shardings)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place a pytree (e.g. a batch) replicated on every device of ``mesh``."""
    rep = replicated(mesh)
    return jax.tree.map(lambda x: _put(x, rep), tree)


def shard_run(state, frozen: PyTree, mesh: Mesh | None, rules=DEFAULT_RULES):
    """Place a ``(state, frozen)`` pair from :func:`zojax.init` on ``mesh`` (no-op for None)."""
    if mesh is None:
        return state, frozen
    return shard(state, state_shardings(state, mesh, rules)), shard(
        frozen, param_shardings(frozen, mesh, rules)
    )


def constrain(tree: PyTree, shardings: PyTree) -> PyTree:
    """``with_sharding_constraint`` leaf by leaf (None leaves kept); use inside ``jit``."""
    return jax.tree.map(jax.lax.with_sharding_constraint, tree, shardings)


# --- multi-host ------------------------------------------------------------------------------


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """``jax.distributed.initialize`` from arguments or the environment; returns whether it ran.

    Explicit: ``coordinator`` (``host:port`` of process 0) or ``JAX_COORDINATOR_ADDRESS``,
    with ``num_processes`` / ``JAX_NUM_PROCESSES`` and ``process_id`` / ``JAX_PROCESS_ID``.
    ``auto=True`` (or ``ZOJAX_DISTRIBUTED=1``) lets JAX detect the cluster (Cloud TPU pods,
    SLURM, Open MPI). Must run before anything touches a device.
    """
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    auto = auto or os.environ.get("ZOJAX_DISTRIBUTED", "") not in ("", "0")
    if not coordinator:
        if auto:
            jax.distributed.initialize()
            return True
        return False

    def need(value, env):
        if value is not None:
            return int(value)
        if env not in os.environ:
            raise MeshError(
                f"multi-host run with coordinator {coordinator}: set --{env[4:].lower().replace('_', '-')} or {env}"
            )
        return int(os.environ[env])

    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=need(num_processes, "JAX_NUM_PROCESSES"),
        process_id=need(process_id, "JAX_PROCESS_ID"),
    )
    return True


def is_main_process() -> bool:
    """Process 0 writes logs, plots and summaries."""
    return jax.process_index() == 0
