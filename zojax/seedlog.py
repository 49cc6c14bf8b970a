"""The seed log: a whole ZO run in a few bytes per step, and exact replay from it.

A step is fully described by ``(run key, step, coeffs)`` and the static spec, so the log
stores a JSON header (key data, noise, eps, K, scope) and one JSON line per step. Floats
are written as the exact decimal of their float32 value, so replay is bitwise.

A log replays a run only if it records steps 0, 1, ..., N-1 with no gap: :meth:`SeedLog.check_steps`
refuses one that does not reach a checkpoint's step. A last line cut short by a kill is dropped
(:func:`read_jsonl`, also used for ``metrics.jsonl``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from zojax import accelerator, paths
from zojax.directions import kind_from_dict
from zojax.errors import SeedLogError
from zojax.files import write_atomic
from zojax.optim import ZOGrad, apply_update, effective_params, fold, init
from zojax.scope import combine
from zojax.scoring import ZOSpec

__all__ = ["SeedLog", "SeedLogError", "replay", "read_jsonl", "base_signature"]


def read_jsonl(path) -> list[dict]:
    """The records of a JSON-lines file that a run appends to.

    A last line that is not JSON is what a kill in the middle of a write leaves: it is dropped
    with a warning. A bad line before the last is damage, and an error naming the line.
    """
    path = Path(path)
    # a torn line may end inside a multi-byte character; it is dropped anyway
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(numbered):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i + 1 < len(numbered):
                raise SeedLogError(f"{path}: line {n} is not JSON ({e}); only a torn last line is dropped") from None
            warnings.warn(f"{path}: dropped line {n}, cut short by an interrupted write: {line[:60]!r}", stacklevel=2)
    return records


def _ranges(steps: list[int]) -> str:
    """``[0, 1, 2, 5, 6]`` -> ``"0-2, 5-6"`` (how a log's steps are named in errors)."""
    if not steps:
        return "none"
    runs: list[str] = []
    start: int | None = steps[0]
    for prev, cur in zip(steps, steps[1:] + [None]):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)

def _prng_impl() -> str:
    return str(jax.config.jax_default_prng_impl)  # type: ignore[attr-defined]  # config options are dynamic


def base_signature(params) -> dict[str, str]:
    """``{leaf path: "shape dtype"}`` of a parameter tree (``"(64, 32) float32"``)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {
        paths.path_str(path): f"{tuple(int(d) for d in np.shape(x))} {np.dtype(jnp.result_type(x)).name}"
        for path, x in leaves
    }


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
    def new(cls, key, spec: ZOSpec, params=None, **extra) -> SeedLog:
        """A log of a run from ``key``; ``params``, the base weights, are recorded as each leaf's
        shape and dtype, so :func:`replay` refuses another base."""
        header = {
            "format": "zojax-seedlog-1",
            "key": _key_data(key),
            "noise": spec.noise.to_dict(),
            "eps": spec.eps,
            "members": spec.members,
            "scope": spec.scope if (spec.scope is None or isinstance(spec.scope, str)) else repr(spec.scope),
            "sided": spec.sided,
            "master_weights": spec.master_weights,
            # the key words mean nothing under another PRNG or another key derivation
            "prng_impl": _prng_impl(),
            "key_derivation": paths.KEY_DERIVATION,
            **({} if params is None else {"base": base_signature(params)}),
            **extra,
        }
        return cls(header)

    def check_base(self, params) -> None:
        """Refuse base weights other than those the log was recorded on (when it records them)."""
        recorded = self.header.get("base")
        if recorded is None:
            return
        have = base_signature(params)
        for path in sorted(recorded.keys() | have.keys()):
            if path not in have:
                raise SeedLogError(f"the base weights lack leaf {path!r} {recorded[path]}, which the seed log was recorded on")
            if path not in recorded:
                raise SeedLogError(f"the base weights hold leaf {path!r} {have[path]}, which the seed log was not recorded on")
            if have[path] != recorded[path]:
                raise SeedLogError(
                    f"base leaf {path!r} is {have[path]}, but the seed log was recorded on {recorded[path]} "
                    "(shape and dtype): replay needs the run's own base model"
                )

    def check_compatible(self) -> None:
        """Refuse a log whose directions this process would not regenerate identically."""
        recorded = (self.header.get("prng_impl"), self.header.get("key_derivation"))
        current = (_prng_impl(), paths.KEY_DERIVATION)
        if recorded != current:
            raise SeedLogError(
                f"seed log was written with PRNG {recorded[0]!r} and key derivation {recorded[1]!r}; this "
                f"process uses {current[0]!r} and {current[1]!r}, so its directions would differ (set "
                "jax_default_prng_impl to match, or use the zojax version that wrote the log)"
            )

    @property
    def key(self) -> jax.Array:
        return jnp.asarray(np.asarray(self.header["key"], np.uint32))

    def spec(self, **overrides) -> ZOSpec:
        """The ZOSpec recorded in the header (pass ``scope=`` if it was a callable)."""
        h = self.header
        fields = dict(noise=kind_from_dict(h["noise"]), eps=h["eps"], members=h["members"], scope=h["scope"], sided=h["sided"],
                      # logs written before the choice existed trained through master copies
                      master_weights=h.get("master_weights", True))
        fields.update(overrides)
        return ZOSpec(**fields)

    def record(self, steps, coeffs, applied, curvature=None) -> None:
        """Append records for steps (arrays with a leading step axis, e.g. a scan's output);
        ``curvature`` (HiZOO's second differences, ``ZOSpec(center=True)``) is recorded when given."""
        steps = np.atleast_1d(np.asarray(steps))
        coeffs = np.asarray(coeffs, np.float32).reshape(len(steps), -1)
        applied = np.atleast_1d(np.asarray(applied))
        curv = None if curvature is None else np.asarray(curvature, np.float32).reshape(len(steps), -1)
        for i, (s, c, a) in enumerate(zip(steps, coeffs, applied)):
            entry = {"step": int(s), "coeffs": [float(x) for x in c], "applied": bool(a)}
            if curv is not None:
                entry["curvature"] = [float(x) for x in curv[i]]
            self.entries.append(entry)

    def check_steps(self, num_steps: int, *, where, exact: bool) -> None:
        """Refuse a log that does not record steps ``0 .. num_steps-1`` in order (``exact``: and no more).

        A log may run past a checkpoint (a kill between writing the log and the checkpoint);
        resuming truncates it, replay (``exact=True``) refuses it."""
        steps = [e.get("step") if isinstance(e, dict) else None for e in self.entries]
        if steps[:num_steps] == list(range(num_steps)) and not (exact and len(steps) != num_steps):
            return
        recorded = _ranges([s for s in steps if isinstance(s, int)])
        raise SeedLogError(
            f"{where} records steps {recorded}, but the checkpoint is at step {num_steps}, so it must record "
            f"steps {_ranges(list(range(num_steps)))}: the weights could not be rebuilt from it"
        )

    @classmethod
    def for_resume(cls, path, num_steps: int) -> SeedLog:
        """The log at ``path`` cut to a checkpoint at step ``num_steps``; refuses one that does not reach it
        (a resumed run would write a log that replay cannot rebuild the weights from)."""
        if not Path(path).exists():
            raise SeedLogError(
                f"{path} is missing, but the checkpoint to resume is at step {num_steps}: the resumed run could not "
                "be replayed. Restore the seed log, or start a new run in another train.output_dir"
            )
        log = cls.load(path)
        log.check_steps(num_steps, where=path, exact=False)
        log.truncate(num_steps)
        return log

    def truncate(self, num_steps: int) -> None:
        """Drop records of steps >= num_steps (used when resuming from a checkpoint)."""
        self.entries = [e for e in self.entries if e["step"] < num_steps]

    def save(self, path) -> None:
        """Write the log atomically (temp file + rename)."""
        write_atomic(path, "".join(json.dumps(record) + "\n" for record in [self.header, *self.entries]))

    @classmethod
    def load(cls, path) -> SeedLog:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"seed log not found: {path}")
        records = read_jsonl(path)
        if not records:
            raise SeedLogError(f"seed log {path} is empty")
        header = records[0]
        if not isinstance(header, dict) or header.get("format") != "zojax-seedlog-1":
            raise SeedLogError(f"{path} is not a zojax seed log (its first line is not a zojax-seedlog-1 header)")
        return cls(header, records[1:])


@functools.partial(accelerator.program, static_argnames=("optimizer", "noise"), donate_argnames=("params", "opt_state"))
def _apply(params, opt_state, key, step, coeffs, curvature, *, optimizer, noise):
    # the same fold and update a training step makes (zojax.step), minus the scoring
    params, opt_state = fold(optimizer, params, opt_state, key, step)
    return apply_update(optimizer, ZOGrad(key, step, coeffs, noise, curvature), params, opt_state)


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
    log.check_compatible()
    log.check_base(base_params)
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
            None if "curvature" not in entry else jnp.asarray(entry["curvature"], jnp.float32),
            optimizer=optimizer,
            noise=spec.noise,
        )
    end = log.entries[-1]["step"] + 1 if log.entries else 0
    return combine(effective_params(optimizer, params, opt_state, key, end), frozen)
