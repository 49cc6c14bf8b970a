"""zojax's programs compile for real TPU topologies on this CPU-only machine, and the TPU compiler's
cost model keeps each step within the issue's ratios of the forward of the same sequences.

A two-layer OPT, wide enough (d = 2048) that the weights, not per-op overheads, set the cost, as at
full size. Compiles for a v5e-8 (one host) and a v5e-32 (8 hosts) at K = 1. The cost model is not a
measurement (see bench/tpu_compile.py); the ratios guard against memory disasters such as a
per-element table gather in the dense generator (338x the forward before it was removed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import tpu_compile  # noqa: E402

WHY_NOT = tpu_compile.tpu_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no TPU compiler here: {WHY_NOT}")

# the targets at K = 1, with room for what two layers add that forty would dilute (the head, the loss)
LIMITS = {"lozo": 1.05, "factorized": 1.15, "mezo": 1.5}


@pytest.fixture(scope="module")
def bundle():
    return tpu_compile.abstract_bundle("tiny-opt", 2, hidden_size=2048, ffn_dim=8192, num_attention_heads=16)


@pytest.mark.parametrize("topology,programs", [
    ("v5e-8", ("forward", "lozo", "lozo_fold", "mezo")),
    ("v5e-32", ("forward", "lozo", "mezo")),
])
def test_steps_compile_within_the_cost_targets(bundle, topology, programs):
    res = tpu_compile.compile_programs(bundle, topology, 1, programs, batch_size=16, seq_len=48, log=print)
    for name, row in res["programs"].items():
        assert row["compiles"], (topology, name, row.get("error"))
        assert row["optimal_seconds"] > 0 and row["hbm_bytes"] > 0, (name, row)
    ratios = res["ratios"]
    for name, limit in LIMITS.items():
        if name in programs:
            assert ratios[name] <= limit, (topology, name, ratios)
    if "lozo_fold" in programs:
        assert ratios["lozo_fold_per_step"] <= tpu_compile.TARGETS["lozo_fold_per_step"], ratios
