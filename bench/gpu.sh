#!/usr/bin/env bash
# The device suite on one accelerator (issue 11): the OPT-13B shape (random weights), bf16,
# 16 prompts x 48 tokens, zojax against the official-style PyTorch loop on the same device.
#
#   bench/gpu.sh                          # every unit -> bench/results/gpu.json
#   bench/gpu.sh --budget 420 --json F    # start no unit that would end past 420 s; write F
#   bench/gpu.sh --only torch,lozo_k1     # a subset of the units (names: bench/run.py --help)
#   bench/gpu.sh --peak-tflops 989        # the MFU denominator (default: H200 bf16 dense)
#   bench/gpu.sh --tiny                   # the same code path at a tiny shape, on CPU too
#                                         # (writes $TMPDIR/zojax-gpu-tiny.json, never gpu.json)
#
# Units, most needed first (bench/run.py, run_device): torch (its own process, first: both
# frameworks reserve the device's memory) -> HF eager forward, official-style MeZO / LoZO
# steps, torch.normal; then zojax: LoZO / MeZO K=1 against the forward of the same 32
# sequences, LoZO at batch 64 (and forward MFU at 128 x 48 tokens), bf16 normals fused in a
# weight update, factorized K=1, LoZO at batch 128 / 32, LoZO / factorized / MeZO at K=8; then
# the forward with unrolled layers, and the forward and LoZO K=1 without zojax's XLA defaults.
# The JSON (GPU name, driver, versions, headline keys, details) is rewritten after every
# unit, so a run cut short keeps what it measured; a table with the targets closes the run.
# Compiled programs are cached in ~/.cache/zojax-bench/xla (ZOJAX_BENCH_CACHE=off disables).
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
  OUT="${TMPDIR:-/tmp}/zojax-gpu-tiny.json"  # tiny numbers never land in the device results
fi

# jax runs after the torch process has exited, then takes most of the device up front
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

# run.py refuses (exit 2) when jax sees no accelerator and --tiny is not given
python bench/run.py --device-suite --json "$OUT" "${ARGS[@]}"
if [[ -f "$OUT" ]]; then echo "results: $OUT"; fi
