#!/usr/bin/env bash
# Mask-ratio ablation: trains one stage-1 MQ-VAE per keep ratio with the SAME config, evaluates
# each run, and writes the ablation table (Markdown) and plot (PNG).
#
#   ROOT=gs://bucket/ffhq_keep KEEPS="0.1 0.2 0.3 0.5 0.7" bash launch/sweep_mask_ratio.sh
#
# Run k trains with
#   $PYTHON -m maskvq_jax.main --config $CONFIG:keep=$k[,$CONFIG_ARGS] --workdir $ROOT/keep_$k \
#       [--multihost] $EXTRA_FLAGS
# then (EVAL=1) `python -m maskvq_jax.evaluate --workdir $ROOT/keep_$k --metrics $METRICS`, and at
# the end `python -m maskvq_jax.tools.ablation_report` over all runs. Runs are sequential; a
# finished run resumes as a no-op (the trainer restores its last checkpoint), so re-running the
# sweep after a preemption continues where it stopped.
#
# Variables (environment):
#   ROOT         required. Parent of the runs; run k goes to $ROOT/keep_$k (local or gs://).
#   KEEPS        required. Space-separated keep ratios in (0, 1], e.g. "0.1 0.2 0.3 0.5".
#   CONFIG       config file accepting ":keep=<ratio>" (default configs/mqvae_ffhq256.py).
#   CONFIG_ARGS  more config args after keep, e.g. "batch=128,rules=fsdp" (default none).
#   EXTRA_FLAGS  more flags for maskvq_jax.main, e.g. "--config.total_epochs=50".
#   PYTHON       interpreter (default <repo>/.venv/bin/python if present, else python3).
#   MULTIHOST    1 on a multi-host pod slice: adds --multihost to training and evaluation. Run
#                this same script on every host, e.g.
#                gcloud compute tpus tpu-vm ssh $TPU --worker=all --command \
#                  "cd maskvq_jax && ROOT=gs://... KEEPS='0.1 0.3' MULTIHOST=1 bash launch/sweep_mask_ratio.sh"
#   WORKER_ID    this host's index (default $TPU_WORKER_ID, else 0); only worker 0 writes the report.
#   EVAL         1 (default): evaluate every run after training; 0: train only.
#   METRICS      evaluation metrics (default rfid,psnr,ssim,usage,mask).
#   EVAL_FLAGS   more flags for maskvq_jax.evaluate, e.g. "--split validation --num_examples 50000".
#   REPORT       Markdown report path (default $ROOT/ablation.md; the plot goes next to it, .png).
#                For gs:// roots the default is ./ablation.md (written locally).
#   DRY_RUN      1: print the commands instead of running them.
set -euo pipefail

die() { echo "sweep_mask_ratio.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -n "${ROOT:-}" ]] || die "ROOT is not set: the parent directory of the runs (e.g. ROOT=/ckpt/ffhq_keep)"
[[ -n "${KEEPS:-}" ]] || die "KEEPS is not set: space-separated keep ratios (e.g. KEEPS=\"0.1 0.3 0.5\")"
CONFIG="${CONFIG:-configs/mqvae_ffhq256.py}"
CONFIG_ARGS="${CONFIG_ARGS:-}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
MULTIHOST="${MULTIHOST:-0}"
WORKER_ID="${WORKER_ID:-${TPU_WORKER_ID:-0}}"
EVAL="${EVAL:-1}"
METRICS="${METRICS:-rfid,psnr,ssim,usage,mask}"
EVAL_FLAGS="${EVAL_FLAGS:-}"
if [[ -z "${REPORT:-}" ]]; then
  if [[ "$ROOT" == gs://* ]]; then REPORT="$PWD/ablation.md"; else REPORT="$ROOT/ablation.md"; fi
fi
DRY_RUN="${DRY_RUN:-0}"

# ---- fail early: every problem is reported before the first (long) training run starts
[[ -f "$REPO/$CONFIG" || -f "$CONFIG" ]] || die "CONFIG=$CONFIG not found (relative to $REPO or absolute)"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not executable"
[[ "$MULTIHOST" == 0 || "$MULTIHOST" == 1 ]] || die "MULTIHOST=$MULTIHOST must be 0 or 1"
[[ "$EVAL" == 0 || "$EVAL" == 1 ]] || die "EVAL=$EVAL must be 0 or 1"
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN=$DRY_RUN must be 0 or 1"
read -r -a KEEP_LIST <<< "$KEEPS"
(( ${#KEEP_LIST[@]} > 0 )) || die "KEEPS is empty"
for k in "${KEEP_LIST[@]}"; do
  [[ "$k" =~ ^(0?\.[0-9]+|1(\.0*)?|0\.?)$ ]] || die "KEEPS: '$k' is not a number in (0, 1]"
  awk -v k="$k" 'BEGIN { exit !(k > 0 && k <= 1) }' || die "KEEPS: '$k' is not in (0, 1]"
done
if [[ -n "$CONFIG_ARGS" && "$CONFIG_ARGS" == *keep=* ]]; then
  die "CONFIG_ARGS must not set keep (the sweep sets it): CONFIG_ARGS=$CONFIG_ARGS"
fi

HOST_FLAGS=()
[[ "$MULTIHOST" == 1 ]] && HOST_FLAGS=(--multihost)

run() {
  if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

cd "$REPO"
WORKDIRS=()
for k in "${KEEP_LIST[@]}"; do
  wd="$ROOT/keep_$k"
  WORKDIRS+=("$wd")
  cfg="$CONFIG:keep=$k${CONFIG_ARGS:+,$CONFIG_ARGS}"
  echo "== keep=$k -> $wd" >&2
  # shellcheck disable=SC2086  # EXTRA_FLAGS / EVAL_FLAGS are deliberately word-split
  run "$PYTHON" -m maskvq_jax.main --config "$cfg" --workdir "$wd" "${HOST_FLAGS[@]}" $EXTRA_FLAGS
  if [[ "$EVAL" == 1 ]]; then
    # shellcheck disable=SC2086
    run "$PYTHON" -m maskvq_jax.evaluate --workdir "$wd" --metrics "$METRICS" "${HOST_FLAGS[@]}" $EVAL_FLAGS
  fi
done

if [[ "$WORKER_ID" == 0 ]]; then
  run "$PYTHON" -m maskvq_jax.tools.ablation_report --workdirs "${WORKDIRS[@]}" --output "$REPORT"
fi
