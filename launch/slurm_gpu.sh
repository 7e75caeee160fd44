#!/usr/bin/env bash
# Multi-node GPU training under SLURM: writes a batch script and submits it with sbatch.
#
#   WORKDIR=/shared/ckpt/mqvae_in CONFIG=configs/mqvae_imagenet256.py NODES=4 GPUS_PER_NODE=8 \
#     bash launch/slurm_gpu.sh            # writes $SBATCH_FILE and runs `sbatch` on it
#
# Processes and GPUs: one SLURM task per GPU (--ntasks-per-node=$GPUS_PER_NODE), started by one
# `srun ... python -m maskvq_jax.main --multihost`. jax.distributed.initialize() reads the SLURM
# environment: coordinator = first node of the step, process id = SLURM_PROCID, process count =
# SLURM_NTASKS, and the local GPU = SLURM_LOCALID. `srun --gpu-bind=none` keeps every GPU of the
# node visible to every task (a per-task binding would leave task k without its GPU k), so the
# NODES x GPUS_PER_NODE processes together drive every GPU. Every process reads its own share of
# the data; WORKDIR must be on a filesystem all nodes see (NFS, Lustre, gs://).
#
# Time limit -> save -> requeue -> resume: `#SBATCH --signal=B:USR1@$SIGNAL_SECS` makes SLURM send
# SIGUSR1 to the batch shell only, SIGNAL_SECS before the time limit. Its trap forwards SIGTERM to
# the training tasks with `scancel --signal=TERM $SLURM_JOB_ID` (every job step, not the batch
# shell; signalling srun itself would not do: srun answers SIGTERM by SIGKILL-ing its tasks). The
# trainers finish the current step, save a checkpoint on every host and exit 0; the batch script
# waits for srun and runs `scontrol requeue $SLURM_JOB_ID`; the requeued job reruns this script and
# the trainers resume from the workdir's last checkpoint.
# Requeue loops are guarded: the script requeues only when the USR1 came while training was still
# running, no SIGTERM came, and srun then exited 0. A finished run (srun returned before any
# signal), a failed one (non-zero status) or a cancelled one (scancel / preemption: SIGTERM,
# forwarded the same way) is not requeued, and MAX_REQUEUES caps the requeues (SLURM_RESTART_COUNT).
# If the signal and the last step coincide, one requeued run restores the final checkpoint and
# stops at once. A preemption by SLURM requeues through `--requeue` (the tasks save on its SIGTERM).
# Requeued runs append to the same output file (--open-mode=append).
#
# Variables (environment):
#   WORKDIR        required. Shared workdir (checkpoints, logs).
#   CONFIG         config file[:args] (default configs/mqvae_imagenet256.py).
#   NODES          number of nodes (default 1).
#   GPUS_PER_NODE  GPUs per node = tasks (JAX processes) per node (default 8).
#   CPUS_PER_TASK  CPU cores per task, i.e. per GPU, for its input pipeline (default 8).
#   TIME           time limit of one job run (default 24:00:00).
#   SIGNAL_SECS    seconds before the time limit at which the save + requeue starts (default 300:
#                  time for one step and a checkpoint write; SLURM may send it up to 60 s early).
#   MAX_REQUEUES   most time-limit requeues of one job (default 50).
#   PARTITION      SLURM partition (default: the cluster's default).
#   ACCOUNT        SLURM account (default: none).
#   JOB_NAME       job name (default maskvq).
#   EXTRA_FLAGS    more flags for maskvq_jax.main, e.g. "--config.input.data_dir=/data/tfds".
#   PYTHON         interpreter on the nodes (default <repo>/.venv/bin/python, with jax[cuda12]).
#   SBATCH_FILE    where the batch script is written (default $WORKDIR/slurm/job.sbatch when
#                  WORKDIR is local, else ./maskvq_job.sbatch).
#   DRY_RUN        1: print the batch script and the sbatch command, write and submit nothing.
set -euo pipefail

die() { echo "slurm_gpu.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/launch/lib.sh"
[[ -n "${WORKDIR:-}" ]] || die "WORKDIR is not set: a workdir on storage every node sees (e.g. WORKDIR=/shared/ckpt/run1)"
CONFIG="${CONFIG:-configs/mqvae_imagenet256.py}"
NODES="${NODES:-1}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
CPUS_PER_TASK="${CPUS_PER_TASK:-8}"
TIME="${TIME:-24:00:00}"
SIGNAL_SECS="${SIGNAL_SECS:-300}"
MAX_REQUEUES="${MAX_REQUEUES:-50}"
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
for v in NODES GPUS_PER_NODE CPUS_PER_TASK SIGNAL_SECS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v=${!v} must be a positive integer"
done
[[ "$MAX_REQUEUES" =~ ^[0-9]+$ ]] || die "MAX_REQUEUES=$MAX_REQUEUES must be a non-negative integer"
(( SIGNAL_SECS <= 65535 )) || die "SIGNAL_SECS=$SIGNAL_SECS is above SLURM's limit of 65535"
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN=$DRY_RUN must be 0 or 1"
[[ "$TIME" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] || die "TIME=$TIME is not a SLURM time (e.g. 24:00:00 or 2-00:00:00)"
[[ "$JOB_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "JOB_NAME=$JOB_NAME: use letters, digits, '.', '_' or '-'"
require_config
# shellcheck disable=SC2086  # EXTRA_FLAGS is a list of flags
reject_set_flags "EXTRA_FLAGS must not contain" $EXTRA_FLAGS
if [[ "$DRY_RUN" == 0 ]]; then
  command -v sbatch >/dev/null 2>&1 || die "sbatch not found: run this on a SLURM login node"
  [[ -x "$PYTHON" ]] || die "PYTHON=$PYTHON is not executable (run launch/setup_env.sh, then pip install 'jax[cuda12]')"
fi

q() { printf '%q' "$1"; }
if [[ "$WORKDIR" == *://* ]]; then OUTPUT="%x-%j.out"; else OUTPUT="$WORKDIR/slurm/%x-%j.out"; fi
HEADER="#!/usr/bin/env bash
#SBATCH --job-name=$JOB_NAME
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=$GPUS_PER_NODE
#SBATCH --gpus-per-node=$GPUS_PER_NODE
#SBATCH --cpus-per-task=$CPUS_PER_TASK
#SBATCH --time=$TIME
#SBATCH --signal=B:USR1@$SIGNAL_SECS
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=$OUTPUT"
[[ -n "$PARTITION" ]] && HEADER+=$'\n'"#SBATCH --partition=$PARTITION"
[[ -n "$ACCOUNT" ]] && HEADER+=$'\n'"#SBATCH --account=$ACCOUNT"

# The body runs on the first node. srun starts in the background so that the traps run at once
# (bash defers a trap until a foreground command returns, but `wait` is interrupted by it).
BODY="# Generated by launch/slurm_gpu.sh; see that script's header for what happens on each signal.
set -uo pipefail
cd $(q "$REPO") || exit 1
MAX_REQUEUES=$MAX_REQUEUES
echo \"slurm job \${SLURM_JOB_ID:-?}: run \$(( \${SLURM_RESTART_COUNT:-0} + 1 )) on \${SLURM_JOB_NODELIST:-?}\" >&2
TIME_LIMIT=0 CANCELLED=0 FORWARDED=0 SRUN_PID=
forward_term() {  # \$1: the signal the batch shell received
  if [[ -z \"\$SRUN_PID\" ]] || ! kill -0 \"\$SRUN_PID\" 2>/dev/null; then return; fi  # training already over
  if [[ \"\$1\" == USR1 ]]; then TIME_LIMIT=1; else CANCELLED=1; fi
  (( FORWARDED )) && return
  FORWARDED=1
  echo \"slurm job \${SLURM_JOB_ID:-?}: SIG\$1 received; SIGTERM to the training tasks (they save and exit)\" >&2
  scancel --signal=TERM \"\$SLURM_JOB_ID\" || echo \"slurm job \${SLURM_JOB_ID:-?}: scancel --signal=TERM failed\" >&2
}
trap 'forward_term USR1' USR1
trap 'forward_term TERM' TERM
# One task per GPU; every task sees the node's GPUs and JAX takes GPU number SLURM_LOCALID.
# A requeued run after a crash finds the workdir lock of the dead run: take over a stale one.
TAKEOVER=; (( \${SLURM_RESTART_COUNT:-0} > 0 )) && TAKEOVER=--config.takeover_lock=True
srun --kill-on-bad-exit=1 --gpu-bind=none $(q "$PYTHON") -m maskvq_jax.main --config $(q "$CONFIG") --workdir $(q "$WORKDIR") --multihost${EXTRA_FLAGS:+ $EXTRA_FLAGS} \$TAKEOVER &
SRUN_PID=\$!
while kill -0 \"\$SRUN_PID\" 2>/dev/null; do wait \"\$SRUN_PID\"; done  # a trap interrupts wait
wait \"\$SRUN_PID\"; RC=\$?  # srun's own status (bash keeps it)
if (( TIME_LIMIT == 0 || CANCELLED == 1 )); then exit \"\$RC\"; fi  # finished, failed or cancelled
if (( RC != 0 )); then
  echo \"slurm job \${SLURM_JOB_ID:-?}: training exited with status \$RC after the time-limit signal; not requeueing\" >&2
  exit \"\$RC\"
fi
if (( \${SLURM_RESTART_COUNT:-0} >= MAX_REQUEUES )); then
  echo \"slurm job \${SLURM_JOB_ID:-?}: already requeued \${SLURM_RESTART_COUNT:-0} times (MAX_REQUEUES=\$MAX_REQUEUES); not requeueing\" >&2
  exit 0
fi
echo \"slurm job \${SLURM_JOB_ID:-?}: checkpoint saved before the time limit; requeueing (the next run resumes)\" >&2
scontrol requeue \"\$SLURM_JOB_ID\""

if [[ "$DRY_RUN" == 1 ]]; then
  printf '%s\n%s\n' "$HEADER" "$BODY"
  echo "sbatch $(q "$SBATCH_FILE")"
  exit 0
fi
mkdir -p "$(dirname "$SBATCH_FILE")"
[[ "$WORKDIR" == *://* ]] || mkdir -p "$WORKDIR/slurm"
printf '%s\n%s\n' "$HEADER" "$BODY" > "$SBATCH_FILE"
sbatch "$SBATCH_FILE"
