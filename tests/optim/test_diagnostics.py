"""zojax.optim.diagnostics: the ZO estimate against the true gradient."""

import jax

import zojax

from ..problems import QUAD_BATCH, quad_params, quadratic

KEY = jax.random.PRNGKey(0)


def test_compare_with_grad_diagnostic():
    params = quad_params()
    report = zojax.compare_with_grad(quadratic, params, QUAD_BATCH, KEY, zojax.ZOSpec(members=16), num_steps=64)
    assert report["cosine_mean"] > 0.9
    assert 0 < report["cosine_single"] < report["cosine_mean"]
    assert report["relative_variance"] > 0
