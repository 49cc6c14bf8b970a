"""Defaults that make zojax's programs faster on an accelerator, set by zojax rather than the user's shell.

* XLA options (:data:`XLA_OPTIONS`) passed to every program zojax compiles for a run (the ZO and
  first-order steps, evaluation): per program, so nothing global changes, they apply even when
  jax is already running, and a backend that has no use for an option (the CPU) ignores it.
  ``ZOJAX_XLA_DEFAULTS=0`` turns them off; an XLA build that no longer knows an option gets none
  (checked once, with a trivial program) and a warning.
* The compute dtype ``auto`` (``model.dtype``): bfloat16 on a GPU or TPU, float32 on the CPU.
* The CPU lowering of zojax's own programs (:func:`cpu_lowering`): large threefry calls as
  straight-line code. It applies only while zojax traces and lowers its programs
  (:func:`program`, :func:`jit`); importing zojax changes nothing in how jax lowers the host
  program's own code.
* :func:`fusion_barrier`, the compiler plumbing the engine uses to keep a draw from being
  recomputed inside a larger consumer.

>>> resolve_dtype("float16")
'float16'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import warnings

import jax
import jax.numpy as jnp

__all__ = ["XLA_OPTIONS", "xla_options", "jit", "program", "cpu_lowering", "fusion_barrier", "resolve_dtype"]

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
    """:func:`program` with :func:`xla_options` as its compiler options: the programs of a run.

    >>> jit(lambda x: x * 2)(jnp.arange(3)).tolist()
    [0, 2, 4]
    """
    return program(fun, compiler_options=xla_options() or None, **kwargs)


def program(fun, **kwargs):
    """``jax.jit(fun, **kwargs)``, traced and lowered under :func:`cpu_lowering`: a program of
    zojax's own. Calls it like the jitted function; ``.lower(...)`` lowers it the same way.

    >>> program(lambda x: x + 1)(jnp.arange(3)).tolist()
    [1, 2, 3]
    """
    jitted = jax.jit(fun, **kwargs)

    @functools.wraps(fun)
    def call(*args, **kw):
        with cpu_lowering():
            return jitted(*args, **kw)

    def lower(*args, **kw):
        with cpu_lowering():
            return jitted.lower(*args, **kw)

    call.lower = lower  # type: ignore[attr-defined]
    return call


# --- the CPU lowering of zojax's programs ---------------------------------------------------

# Whether the program being lowered now is one of zojax's (set by cpu_lowering, per thread/task).
_ZOJAX_PROGRAM: contextvars.ContextVar[bool] = contextvars.ContextVar("zojax_program", default=False)

# A threefry call at least this large lowers as straight-line code in zojax's programs; smaller
# ones (the scalar fold_in key derivations, dozens per step) keep the compact loop, so compile
# time does not grow.
_STRAIGHT_LINE_MIN = 4096


@functools.cache
def _install_threefry_rule() -> None:
    """Register, once, a CPU lowering of threefry2x32 that is jax's own (a 5-iteration ``while``
    loop) for every program except zojax's (:func:`cpu_lowering`), which get the straight-line
    form GPU/TPU get. Skipped quietly if jax's internals move."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as _tf

        rolled, unrolled = _tf._threefry2x32_cpu_lowering_rule, _tf._threefry2x32_lowering_rule

        def rule(ctx, *args):
            large = max(math.prod(a.shape) for a in ctx.avals_in) >= _STRAIGHT_LINE_MIN
            return (unrolled if large and _ZOJAX_PROGRAM.get() else rolled)(ctx, *args)

        mlir.register_lowering(_tf.threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError):  # pragma: no cover - depends on the jax version
        pass


@contextlib.contextmanager
def cpu_lowering():
    """Within it, programs lowered for the CPU get large threefry2x32 calls as straight-line code.

    jax lowers threefry on CPU as a 5-iteration ``while`` loop to save compile time; each
    iteration is then a separate pass over the whole counter array, which makes large
    ``jax.random`` draws (LoZO/factorized factors) 3-5x slower than the straight-line form,
    which XLA fuses into a single elementwise loop with the uniform/normal transform. Same
    bits, same values: only the lowering changes, and only for programs lowered inside this
    context (zojax's own: :func:`program`, :func:`jit`). A program of the host's that jax
    has already lowered inside it keeps that lowering from jax's caches (same values). A
    no-op on GPU/TPU.

    >>> with cpu_lowering():
    ...     z = jax.jit(lambda k: jax.random.normal(k, (8192,)))(jax.random.PRNGKey(0))
    >>> bool(jnp.all(z == jax.random.normal(jax.random.PRNGKey(0), (8192,))))
    True
    """
    _install_threefry_rule()
    token = _ZOJAX_PROGRAM.set(True)
    try:
        yield
    finally:
        _ZOJAX_PROGRAM.reset(token)


def fusion_barrier(tree, step):
    """``tree`` as buffers that XLA cannot fuse into their consumers.

    Low-rank factors are read once per element of a much larger array (an outer product
    in the update, a broadcast in :func:`zojax.nn.dense`); fused there, XLA would redraw
    their random numbers for every element. A conditional on a runtime predicate
    (``step >= 0``: always true, unknown to the compiler) is a fusion boundary that
    survives optimisation (``lax.optimization_barrier`` does not, on CPU).
    """
    return jax.lax.cond(
        jnp.asarray(step) >= 0, lambda t: t, lambda t: jax.tree.map(jnp.zeros_like, t), tree
    )


def resolve_dtype(name: str) -> str:
    """A config's compute dtype name, with ``auto`` resolved for jax's default backend: bfloat16 on
    an accelerator (its matmul units run bf16 at full rate; MeZO and the seed paper score in half
    precision), float32 on the CPU (where bf16 matmuls are emulated and slower)."""
    if name != "auto":
        return name
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
