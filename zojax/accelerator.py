"""Defaults that make zojax's programs faster on an accelerator, set by zojax rather than the user's shell.

* XLA options (:data:`XLA_OPTIONS`) passed to every program zojax compiles for a run (the ZO and
  first-order steps, evaluation): per program, so nothing global changes, they apply even when
  jax is already running, and a backend that has no use for an option (the CPU) ignores it.
  ``ZOJAX_XLA_DEFAULTS=0`` turns them off; an XLA build that no longer knows an option gets none
  (checked once, with a trivial program) and a warning.
* The compute dtype ``auto`` (``model.dtype``): bfloat16 on a GPU or TPU, float32 on the CPU.

>>> resolve_dtype("float16")
'float16'
"""

from __future__ import annotations

import functools
import os
import warnings

import jax
import jax.numpy as jnp

__all__ = ["XLA_OPTIONS", "xla_options", "jit", "resolve_dtype"]

#: Compiler options for zojax's programs. cuBLAS(Lt) GEMMs instead of XLA's Triton GEMMs on GPU:
#: issue 11's H200 measurement at the OPT-13B shape (bf16, 16 x 48) put the LoZO step at 81 ms
#: with them against 91 ms without, and the forward 2-4% faster; ``bench/gpu.sh`` re-measures it
#: side by side (its ``xla_options`` unit).
XLA_OPTIONS: dict[str, object] = {"xla_gpu_enable_triton_gemm": False}

_OFF = ("0", "off", "false", "no")


@functools.cache
def _supported_options() -> tuple[tuple[str, object], ...]:
    options = tuple(XLA_OPTIONS.items())
    try:  # an option this XLA build does not know fails the compile; find out once, on a trivial program
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(jnp.zeros((), jnp.float32)).compile()
    except Exception as e:  # noqa: BLE001 - jax reports it as a runtime or value error, by version
        warnings.warn(f"zojax: this XLA build rejects the default compiler options {dict(options)} ({e}); "
                      "compiling without them", RuntimeWarning, stacklevel=3)
        return ()
    return options


def xla_options() -> dict[str, object]:
    """The compiler options zojax passes to its programs: :data:`XLA_OPTIONS`, unless
    ``ZOJAX_XLA_DEFAULTS=0`` or the XLA build rejects them (then ``{}``).

    >>> xla_options() == ({} if os.environ.get("ZOJAX_XLA_DEFAULTS", "1").lower() in _OFF else XLA_OPTIONS)
    True
    """
    if os.environ.get("ZOJAX_XLA_DEFAULTS", "1").strip().lower() in _OFF:
        return {}
    return dict(_supported_options())


def jit(fun, **kwargs):
    """``jax.jit(fun, **kwargs)`` with :func:`xla_options` as its compiler options.

    >>> jit(lambda x: x * 2)(jnp.arange(3)).tolist()
    [0, 2, 4]
    """
    return jax.jit(fun, compiler_options=xla_options() or None, **kwargs)


def resolve_dtype(name: str) -> str:
    """A config's compute dtype name, with ``auto`` resolved for jax's default backend: bfloat16 on
    an accelerator (its matmul units run bf16 at full rate; MeZO and the seed paper score in half
    precision), float32 on the CPU (where bf16 matmuls are emulated and slower)."""
    if name != "auto":
        return name
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
