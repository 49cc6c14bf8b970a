"""Type aliases shared by zojax's modules, defined once here.

``PyTree`` is for readers and type checkers only (JAX has no pytree type). The schedule aliases are
optax's, so that a learning rate is annotated the same way as in optax itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
import optax

__all__ = ["PyTree", "LossFn", "Schedule", "ScalarOrSchedule"]

PyTree: TypeAlias = Any
"""A JAX pytree: nested dicts / lists / tuples / registered nodes of arrays (``None`` at absent leaves)."""

LossFn: TypeAlias = Callable[[PyTree, Any], jax.Array]
"""``loss_fn(params, batch) -> scalar``: the pure function the engine scores."""

Schedule: TypeAlias = optax.Schedule
"""``step -> value`` (``optax.Schedule``)."""

ScalarOrSchedule: TypeAlias = optax.ScalarOrSchedule
"""A constant or a schedule (``optax.ScalarOrSchedule``), as every zojax optimiser's learning rate."""
