#!/usr/bin/env bash
# Multi-node GPU training under SLURM: submit with sbatch, or run directly to generate + submit.
#
#   WORKDIR=/shared/ckpt/mqvae_in CONFIG=configs/mqvae_imagenet256.py NODES=4 \
#     bash launch/slurm_gpu.sh            # writes the batch script and runs `sbatch` on it
#
# One task per node owns all of that node's GPUs (GPUS_PER_NODE); `srun` starts the tasks and
# `python -m maskvq_jax.main --multihost` lets jax.distributed.initialize() read the SLURM
# environment (coordinator = first node of the allocation, process id = SLURM_PROCID). Every task
# reads its own share of the data; WORKDIR must be on a filesystem all nodes see (NFS, Lustre,
# gs://). SLURM sends SIGTERM before a time-limit kill or a preemption (`--signal`), the trainer
# then saves and exits cleanly, and resubmitting the same job resumes (`--requeue` does it for you).
#
# Variables (environment):
#   WORKDIR        required. Shared workdir (checkpoints, logs).
#   CONFIG         config file[:args] (default configs/mqvae_imagenet256.py).
#   NODES          number of nodes (default 1).
#   GPUS_PER_NODE  GPUs per node (default 8).
#   CPUS_PER_TASK  CPU cores per node for the input pipeline (default 32).
#   TIME           time limit (default 24:00:00).
#   PARTITION      SLURM partition (default: the cluster's default).
#   ACCOUNT        SLURM account (default: none).
#   JOB_NAME       job name (default maskvq).
#   EXTRA_FLAGS    more flags for maskvq_jax.main, e.g. "--config.input.data_dir=/data/tfds".
#   PYTHON         interpreter on the nodes (default <repo>/.venv/bin/python).
#   SBATCH_FILE    where the batch script is written (default $WORKDIR/slurm/job.sbatch when
#                  WORKDIR is local, else ./maskvq_job.sbatch).
#   DRY_RUN        1: print the batch script and the sbatch command, submit nothing.
set -euo pipefail

die() { echo "slurm_gpu.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -n "${WORKDIR:-}" ]] || die "WORKDIR is not set: a workdir on storage every node sees (e.g. WORKDIR=/shared/ckpt/run1)"
CONFIG="${CONFIG:-configs/mqvae_imagenet256.py}"
NODES="${NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CPUS_PER_TASK="${CPUS_PER_TASK:-32}"
TIME="${TIME:-24:00:00}"
PARTITION="${PARTITION:-}"
ACCOUNT="${ACCOUNT:-}"
JOB_NAME="${JOB_NAME:-maskvq}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
DRY_RUN="${DRY_RUN:-0}"
if [[ -z "${SBATCH_FILE:-}" ]]; then
  if [[ "$WORKDIR" == *://* ]]; then SBATCH_FILE="$PWD/maskvq_job.sbatch"; else SBATCH_FILE="$WORKDIR/slurm/job.sbatch"; fi
fi

# ---- fail early
for v in NODES GPUS_PER_NODE CPUS_PER_TASK; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v=${!v} must be a positive integer"
done
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN=$DRY_RUN must be 0 or 1"
[[ "$TIME" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] || die "TIME=$TIME is not a SLURM time (e.g. 24:00:00 or 2-00:00:00)"
cfg_file="${CONFIG%%:*}"
[[ -f "$REPO/$cfg_file" ]] || die "CONFIG=$CONFIG: $cfg_file not found in $REPO"
if [[ "$DRY_RUN" == 0 ]]; then
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node"
  [[ -x "$PYTHON" ]] || die "PYTHON=$PYTHON is not executable (run launch/setup_env.sh, then pip install 'jax[cuda12]')"
fi

q() { printf '%q' "$1"; }
HEADER="#!/usr/bin/env bash
#SBATCH --job-name=$JOB_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --cpus-per-task=$CPUS_PER_TASK
#SBATCH --time=$TIME
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --output=$( [[ "$WORKDIR" == *://* ]] && echo "%x-%j.out" || echo "$WORKDIR/slurm/%x-%j.out")"
[[ -n "$PARTITION" ]] && HEADER+=$'\n'"#SBATCH --partition=$PARTITION"
[[ -n "$ACCOUNT" ]] && HEADER+=$'\n'"#SBATCH --account=$ACCOUNT"

BODY="set -euo pipefail
cd $(q "$REPO")
# jax.distributed.initialize() reads SLURM_* (nodes, task id, first node as coordinator).
srun --kill-on-bad-exit=1 $(q "$PYTHON") -m maskvq_jax.main --config $(q "$CONFIG") --workdir $(q "$WORKDIR") --multihost $EXTRA_FLAGS"

if [[ "$DRY_RUN" == 1 ]]; then
  printf '%s\n%s\n' "$HEADER" "$BODY"
  echo "sbatch $(q "$SBATCH_FILE")"
  exit 0
fi
mkdir -p "$(dirname "$SBATCH_FILE")"
[[ "$WORKDIR" == *://* ]] || mkdir -p "$WORKDIR/slurm"
printf '%s\n%s\n' "$HEADER" "$BODY" > "$SBATCH_FILE"
sbatch "$SBATCH_FILE"
