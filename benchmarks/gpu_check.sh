#!/usr/bin/env bash
# One prepared accelerator run: correctness checks and throughput at the paper's sizes.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [TIME_LIMIT_S]
#
# Needs a GPU/TPU JAX (plus flax, optax, numpy); no TensorFlow, clu, grain or ml_collections.
# The golden file is looked up in $GOLDEN, then .gpu_golden/ (a copy carried to a device
# machine), then ../shared/golden/. Results stream to OUT_DIR/gpu.jsonl (one JSON line per section),
# so a run cut short by its time limit still leaves every finished section.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
LIMIT="${2:-540}"
mkdir -p "$OUT_DIR"
GOLDEN="${GOLDEN:-}"
for g in .gpu_golden/official_small.npz ../shared/golden/official_small.npz; do
  [[ -z "$GOLDEN" && -f "$g" ]] && GOLDEN="$g"
done
[[ -n "$GOLDEN" ]] || echo "gpu_check: no golden file found; the golden section will report an error" >&2
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT_DIR/device.txt"
timeout "$LIMIT" python benchmarks/gpu_bench.py --out "$OUT_DIR/gpu.jsonl" --golden "${GOLDEN:-missing}" \
  --sections "${SECTIONS:-stackformer,sampling,mqvae,bf16,golden}" \
  --stackformer_variants "${VARIANTS:-xla,dot_product}" --mqvae_dtypes "${MQVAE_DTYPES:-bf16}" \
  --runs "${RUNS:-3}" 2>&1 | tee "$OUT_DIR/log.txt"
echo "gpu_check: exit ${PIPESTATUS[0]} (124 = time limit reached; finished sections are in gpu.jsonl)"
