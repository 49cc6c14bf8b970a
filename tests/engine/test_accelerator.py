"""zojax's accelerator defaults: compiler options on its programs, the ``auto`` compute dtype."""

import warnings

import jax
import jax.numpy as jnp
import pytest

import zojax
from zojax import accelerator


def _tiny_step():
    spec, opt = zojax.ZOSpec(members=2), zojax.zo_sgd(0.1)
    compiled = zojax.make_step(lambda p, b: jnp.sum((p["w"] - b) ** 2), spec, opt)
    state, frozen = zojax.init({"w": jnp.zeros(3)}, spec, opt, jax.random.PRNGKey(0))
    return compiled, state, frozen


def test_defaults_on_unless_switched_off(monkeypatch):
    monkeypatch.delenv("ZOJAX_XLA_DEFAULTS", raising=False)
    assert accelerator.xla_options() == accelerator.XLA_OPTIONS != {}
    monkeypatch.setenv("ZOJAX_XLA_DEFAULTS", "0")
    assert accelerator.xla_options() == {}


def test_step_is_compiled_with_the_options(monkeypatch):
    """The options reach the compiler: an option XLA does not know fails the step's compile."""
    monkeypatch.setattr(accelerator, "xla_options", lambda: {"xla_no_such_option_zojax": True})
    compiled, state, frozen = _tiny_step()
    with pytest.raises(Exception, match="xla_no_such_option_zojax"):
        compiled.step(state, frozen, jnp.ones(3))
    monkeypatch.undo()
    compiled, state, frozen = _tiny_step()  # the real defaults compile and run on this backend
    state, info = compiled.step(state, frozen, jnp.ones(3))
    assert bool(info.applied) and info.losses.shape == (2, 2)


def test_an_unknown_option_is_dropped_with_a_warning(monkeypatch):
    monkeypatch.delenv("ZOJAX_XLA_DEFAULTS", raising=False)
    monkeypatch.setattr(accelerator, "XLA_OPTIONS", {"xla_no_such_option_zojax": True})
    accelerator._supported_options.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="xla_no_such_option_zojax"):
            assert accelerator.xla_options() == {}
        f = accelerator.jit(lambda x: x + 1)  # and programs still compile, without it
        assert float(f(jnp.float32(1))) == 2.0
    finally:
        accelerator._supported_options.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.undo()
        assert accelerator.xla_options() == accelerator.XLA_OPTIONS


def test_auto_dtype_follows_the_backend(monkeypatch):
    assert accelerator.resolve_dtype("auto") == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert accelerator.resolve_dtype("auto") == "bfloat16"
    assert accelerator.resolve_dtype("float32") == "float32"


def _threefry_loops(lowered) -> int:
    return lowered.as_text().count("stablehlo.while")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rule is the CPU's")
def test_straight_line_threefry_only_in_zojax_programs():
    """zojax's programs lower a large threefry call without jax's CPU loop; a program of the host's,
    lowered before or after one of zojax's, keeps jax's own lowering (and the same values)."""
    key = jax.random.PRNGKey(0)

    def host_program(k):
        return jax.random.normal(k, (64, 128))

    assert _threefry_loops(jax.jit(host_program).lower(key)) > 0  # jax's CPU rule: a while loop
    ours = accelerator.program(lambda k: jax.random.normal(k, (64, 128)))
    assert _threefry_loops(ours.lower(key)) == 0
    assert _threefry_loops(jax.jit(lambda k: jax.random.normal(k, (64, 128))).lower(key)) > 0
    assert bool(jnp.all(ours(key) == jax.jit(host_program)(key)))
