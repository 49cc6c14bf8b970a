#!/usr/bin/env bash
# The device suite on one accelerator: OPT-1.3B- and OPT-13B-shaped models (random weights), bf16.
#
#   bench/gpu.sh                      # every device measure -> bench/results/gpu.json
#   bench/gpu.sh --only efficiency    # a subset (efficiency, memory, scaling)
#   bench/gpu.sh --tiny               # the same code path at a tiny shape (runs on CPU too)
#
# Measures, as on CPU (README, Benchmarks): one ZO step / one plain forward over the same 2*K*B
# sequences (LoZO r=2, factorized r=128, dense MeZO; K = 1 and 8, batch 16 prompts of 48 tokens),
# XLA's peak-memory analysis of a dense MeZO step with K=16, and scaling in K and batch size.
# Targets: LoZO batch-16 step on the OPT-13B shape <= 0.088 s (key device_lozo_step_s_opt13b_b16)
# and inference efficiency <= 1.10 (device_inference_efficiency_lozo). The torch baseline is the
# CPU comparison and is not run here. Compiled programs are cached in ~/.cache/zojax-bench/xla
# (ZOJAX_BENCH_CACHE=off disables), so a second run spends its time measuring.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="bench/results/gpu.json"
ARGS=()
TINY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --json) OUT="$2"; shift 2 ;;
    --tiny) TINY=1; ARGS+=("--tiny"); shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ $TINY == 1 && "$OUT" == "bench/results/gpu.json" ]]; then
  OUT="${TMPDIR:-/tmp}/zojax-gpu-tiny.json"
fi

# one process owns the accelerator: let XLA take most of its memory up front
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

if [[ $TINY == 0 ]]; then
  backend=$(python -c "import jax; print(jax.default_backend())")
  if [[ "$backend" == "cpu" ]]; then
    echo "gpu.sh: jax sees no accelerator (backend: cpu); use --tiny to check the code path on CPU" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi

python bench/run.py --device-suite --json "$OUT" "${ARGS[@]}"
echo "results: $OUT"
