#!/usr/bin/env bash
# Cloud TPU VM pods in one line: create the slice, install the project on every worker, train.
#
#   TPU_NAME=mq-v5p-256 ZONE=us-east5-a ACCELERATOR_TYPE=v5p-256 WORKDIR=gs://bucket/mqvae_in \
#     CONFIG=configs/mqvae_imagenet256.py bash launch/tpu_vm.sh all
#
# Steps (first argument; default "all" = create + install + train):
#   create   gcloud compute tpus tpu-vm create $TPU_NAME --zone $ZONE --accelerator-type
#            $ACCELERATOR_TYPE --version $RUNTIME_VERSION [--spot]
#   install  on every worker (ssh --worker=all): copy the repo (git clone $REPO_URL, or a
#            `git archive` of this checkout's HEAD when REPO_URL is empty), `bash launch/setup_env.sh`, then
#            `pip install "jax[tpu]==$JAX_VERSION"` into its .venv
#   train    on every worker: `python -m maskvq_jax.main --config $CONFIG --workdir $WORKDIR
#            --multihost $EXTRA_FLAGS`; jax.distributed.initialize() finds the pod by itself
#   delete   gcloud compute tpus tpu-vm delete $TPU_NAME (asks for confirmation)
# Every worker runs the same command and reads its own share of the data; the workdir must be
# shared (gs://) because all hosts write their shards of each checkpoint there. A preempted
# (spot) slice: re-create it and run `train` again; the run resumes from the last checkpoint.
#
# Variables (environment):
#   TPU_NAME          required. Name of the TPU VM / pod slice.
#   ZONE              required. e.g. us-east5-a.
#   WORKDIR           required for train. Shared gs://bucket/path (local paths are per-worker and
#                     refused on multi-host slices).
#   ACCELERATOR_TYPE  required for create, e.g. v5p-256, v4-64, v5litepod-16.
#   CONFIG            config for train (default configs/mqvae_imagenet256.py), with :args allowed.
#   EXTRA_FLAGS       more flags for maskvq_jax.main, e.g. "--config.input.data_dir=gs://b/tfds".
#   PROJECT           gcloud project (default: gcloud's configured one).
#   RUNTIME_VERSION   TPU VM image (default tpu-ubuntu2204-base).
#   SPOT              1: create a spot (preemptible) slice.
#   JAX_VERSION       jax[tpu] version installed on the workers (default 0.12.0.1).
#   REPO_URL          git URL cloned on the workers (default: copy this checkout's committed HEAD).
#   REMOTE_DIR        checkout directory on the workers (default maskvq_jax).
#   DRY_RUN           1: print the commands instead of running them.
set -euo pipefail

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEP="${1:-all}"
case "$STEP" in create|install|train|delete|all) ;; *)
  die "unknown step '$STEP': choose create, install, train, delete or all";; esac
(( $# <= 1 )) || die "one step at a time; extra arguments go in EXTRA_FLAGS (got: $*)"

[[ -n "${TPU_NAME:-}" ]] || die "TPU_NAME is not set: the TPU VM / pod slice name (e.g. TPU_NAME=mq-v5p-256)"
[[ -n "${ZONE:-}" ]] || die "ZONE is not set: the slice's zone (e.g. ZONE=us-east5-a)"
CONFIG="${CONFIG:-configs/mqvae_imagenet256.py}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
JAX_VERSION="${JAX_VERSION:-0.12.0.1}"
REPO_URL="${REPO_URL:-}"
REMOTE_DIR="${REMOTE_DIR:-maskvq_jax}"
DRY_RUN="${DRY_RUN:-0}"
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN=$DRY_RUN must be 0 or 1"
[[ "$SPOT" == 0 || "$SPOT" == 1 ]] || die "SPOT=$SPOT must be 0 or 1"
if [[ "$STEP" == create || "$STEP" == all ]]; then
  [[ -n "${ACCELERATOR_TYPE:-}" ]] || die "ACCELERATOR_TYPE is not set: needed to create the slice (e.g. ACCELERATOR_TYPE=v5p-256)"
fi
if [[ "$STEP" == train || "$STEP" == all ]]; then
  [[ -n "${WORKDIR:-}" ]] || die "WORKDIR is not set: a shared gs://bucket/path for checkpoints and logs"
  [[ "$WORKDIR" == gs://* ]] || die "WORKDIR=$WORKDIR is not a gs:// path; every worker of a pod must write to the same shared workdir"
  cfg_file="${CONFIG%%:*}"
  [[ -f "$REPO/$cfg_file" ]] || die "CONFIG=$CONFIG: $cfg_file not found in $REPO"
fi
if [[ "$DRY_RUN" == 0 ]]; then
  command -v gcloud >/dev/null 2>&1 || die "gcloud not found on PATH (install the Google Cloud SDK)"
fi

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone "$ZONE")
[[ -n "${PROJECT:-}" ]] && COMMON+=(--project "$PROJECT")

run() {
  if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
on_all_workers() {  # $1: shell command run on every worker
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all --command "$1"
}

do_create() {
  local extra=()
  [[ "$SPOT" == 1 ]] && extra=(--spot)
  run "${GCLOUD[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type "$ACCELERATOR_TYPE" \
    --version "$RUNTIME_VERSION" "${extra[@]}"
}

do_install() {
  if [[ -n "$REPO_URL" ]]; then
    on_all_workers "set -e; [ -d $REMOTE_DIR/.git ] || git clone $(printf %q "$REPO_URL") $REMOTE_DIR; cd $REMOTE_DIR && git pull --ff-only"
  else  # the committed HEAD of this checkout (git archive: no .venv, no untracked files)
    local tarball="${TMPDIR:-/tmp}/maskvq_src_$$.tar.gz"
    run git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD
    run "${GCLOUD[@]}" scp "$tarball" "$TPU_NAME:maskvq_src.tar.gz" "${COMMON[@]}" --worker=all
    on_all_workers "set -e; mkdir -p $REMOTE_DIR && tar -xzf maskvq_src.tar.gz -C $REMOTE_DIR && rm maskvq_src.tar.gz"
  fi
  on_all_workers "set -e; cd $REMOTE_DIR && bash launch/setup_env.sh && .venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION'"
}

do_train() {
  local cmd
  cmd="cd $REMOTE_DIR && .venv/bin/python -m maskvq_jax.main --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR") --multihost $EXTRA_FLAGS"
  on_all_workers "$cmd"
}

do_delete() {
  run "${GCLOUD[@]}" delete "$TPU_NAME" "${COMMON[@]}"
}

case "$STEP" in
  create) do_create;;
  install) do_install;;
  train) do_train;;
  delete) do_delete;;
  all) do_create; do_install; do_train;;
esac
