"""The seed log: a whole ZO run in a few bytes per step, and exact replay from it.

A step is fully described by ``(run key, step, coeffs)`` and the static spec, so the log
stores a JSON header (key data, noise, eps, K, scope) and one JSON line per step. Floats
are written as the exact decimal of their float32 value, so replay is bitwise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zojax import noise as noise_lib
from zojax.noise import combine
from zojax.optim import ZOGrad, init
from zojax.scoring import ZOSpec

__all__ = ["SeedLog", "replay", "noise_to_dict", "noise_from_dict"]

_NOISE_KINDS = {
    cls.__name__: cls
    for cls in (noise_lib.Gaussian, noise_lib.Rademacher, noise_lib.LowRank, noise_lib.Factorized)
}


def noise_to_dict(noise) -> dict:
    """A JSON-able description of a noise kind.

    >>> noise_to_dict(noise_lib.LowRank(rank=2, refresh_every=50))
    {'kind': 'LowRank', 'rank': 2, 'refresh_every': 50, 'vectors': 'dense'}
    """
    return {"kind": type(noise).__name__, **dataclasses.asdict(noise)}


def noise_from_dict(d: dict):
    d = dict(d)
    kind = d.pop("kind")
    if kind not in _NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r} in seed log; known: {sorted(_NOISE_KINDS)}")
    return _NOISE_KINDS[kind](**d)


def _key_data(key) -> list[int]:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key).astype(np.uint32).ravel().tolist()


@dataclasses.dataclass
class SeedLog:
    """Header + per-step records ``(step, coeffs, applied)``.

    >>> log = SeedLog.new(jax.random.PRNGKey(0), ZOSpec(members=2))
    >>> log.record(jnp.arange(3), jnp.ones((3, 2)), jnp.array([True, True, False]))
    >>> [e["step"] for e in log.entries], log.entries[2]["applied"]
    ([0, 1, 2], False)
    """

    header: dict
    entries: list[dict] = dataclasses.field(default_factory=list)

    @classmethod
    def new(cls, key, spec: ZOSpec, **extra) -> SeedLog:
        header = {
            "format": "zojax-seedlog-1",
            "key": _key_data(key),
            "noise": noise_to_dict(spec.noise),
            "eps": spec.eps,
            "members": spec.members,
            "scope": spec.scope if (spec.scope is None or isinstance(spec.scope, str)) else repr(spec.scope),
            "sided": spec.sided,
            **extra,
        }
        return cls(header)

    @property
    def key(self) -> jax.Array:
        return jnp.asarray(np.asarray(self.header["key"], np.uint32))

    def spec(self, **overrides) -> ZOSpec:
        """The ZOSpec recorded in the header (pass ``scope=`` if it was a callable)."""
        h = self.header
        fields = dict(noise=noise_from_dict(h["noise"]), eps=h["eps"], members=h["members"], scope=h["scope"], sided=h["sided"])
        fields.update(overrides)
        return ZOSpec(**fields)

    def record(self, steps, coeffs, applied) -> None:
        """Append records for steps (arrays with a leading step axis, e.g. a scan's output)."""
        steps = np.atleast_1d(np.asarray(steps))
        coeffs = np.asarray(coeffs, np.float32).reshape(len(steps), -1)
        applied = np.atleast_1d(np.asarray(applied))
        for s, c, a in zip(steps, coeffs, applied):
            self.entries.append({"step": int(s), "coeffs": [float(x) for x in c], "applied": bool(a)})

    def truncate(self, num_steps: int) -> None:
        """Drop records of steps >= num_steps (used when resuming from a checkpoint)."""
        self.entries = [e for e in self.entries if e["step"] < num_steps]

    def save(self, path) -> None:
        """Write the log atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(self.header) + "\n")
            for e in self.entries:
                f.write(json.dumps(e) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> SeedLog:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"seed log not found: {path}")
        lines = path.read_text().splitlines()
        if not lines:
            raise ValueError(f"seed log {path} is empty")
        header = json.loads(lines[0])
        if header.get("format") != "zojax-seedlog-1":
            raise ValueError(f"{path} is not a zojax seed log (header format {header.get('format')!r})")
        return cls(header, [json.loads(line) for line in lines[1:] if line.strip()])


@functools.partial(jax.jit, static_argnames=("optimizer", "noise"), donate_argnames=("params", "opt_state"))
def _apply(params, opt_state, key, step, coeffs, *, optimizer, noise):
    grad = ZOGrad(key, step, coeffs, noise)
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def replay(base_params: Any, log: SeedLog, optimizer: optax.GradientTransformation, *, spec: ZOSpec | None = None):
    """Rebuild trained parameters from the base parameters and a seed log, without any loss.

    Returns the full parameter pytree. ``spec`` defaults to the one recorded in the log.
    Skipped (non-finite) steps are skipped here too.

    >>> from zojax.optim import step, zo_sgd
    >>> loss = lambda p, b: jnp.sum((p["w"] - b) ** 2)
    >>> spec, opt, key = ZOSpec(members=2), zo_sgd(0.05), jax.random.PRNGKey(1)
    >>> base = {"w": jnp.zeros(3)}
    >>> state, frozen = init(jax.tree.map(jnp.copy, base), spec, opt, key)  # step donates
    >>> log = SeedLog.new(key, spec)
    >>> for _ in range(5):
    ...     state, info = step(state, frozen, jnp.ones(3), loss_fn=loss, spec=spec, optimizer=opt)
    ...     log.record(info.step, info.coeffs, info.applied)
    >>> bool(jnp.array_equal(replay(base, log, opt)["w"], state.params["w"]))
    True
    """
    spec = spec or log.spec()
    key = log.key
    state, frozen = init(base_params, spec, optimizer, key)
    # copies, because the update donates its inputs and base_params stay the caller's
    params, opt_state = jax.tree.map(jnp.copy, (state.params, state.opt_state))
    for entry in log.entries:
        if not entry["applied"]:
            continue
        params, opt_state = _apply(
            params,
            opt_state,
            key,
            jnp.int32(entry["step"]),
            jnp.asarray(entry["coeffs"], jnp.float32),
            optimizer=optimizer,
            noise=spec.noise,
        )
    return combine(params, frozen)
