#!/usr/bin/env bash
# Cloud TPU VM slices (v4, v5e, v5p, v6e) in one line: create the slice, install the project on
# every worker, start training detached, watch it, resume it on a re-created slice.
#
#   TPU_NAME=mq-v5p-64 ZONE=us-east5-a ACCELERATOR_TYPE=v5p-64 WORKDIR=gs://bucket/mqvae_in \
#     CONFIG=configs/mqvae_imagenet256.py bash launch/tpu_vm.sh all
#   TPU_NAME=mq-v5p-64 ZONE=us-east5-a bash launch/tpu_vm.sh logs     # last lines of every worker
#
# Steps (first argument; default "all" = create + install + train):
#   create   gcloud compute tpus tpu-vm create $TPU_NAME --zone $ZONE --accelerator-type
#            $ACCELERATOR_TYPE --version $RUNTIME_VERSION [--spot]; the runtime image follows the
#            generation: v4 -> tpu-ubuntu2204-base, v5litepod (v5e) -> v2-alpha-tpuv5-lite,
#            v5p -> v2-alpha-tpuv5, v6e -> v2-alpha-tpuv6e.
#   install  on every worker (ssh --worker=all): copy the repo (git clone $REPO_URL, or a
#            `git archive` of this checkout's HEAD when REPO_URL is empty); install uv
#            (`pip install --user uv`) and Python $PYTHON_VERSION through it (`uv python install`;
#            the TPU images ship an older Python), run launch/setup_env.sh with PYTHON set to it,
#            then `pip install "jax[tpu]==$JAX_VERSION"` into its .venv (requirements.txt's pin).
#   train    on every worker, detached (setsid nohup; a dropped ssh connection does not stop it):
#            `python -m maskvq_jax.main --config $CONFIG --workdir $WORKDIR --multihost
#            $EXTRA_FLAGS`, output appended to $LOG_DIR/worker_<hostname>.log, its pid in
#            $LOG_DIR/worker_<hostname>.pid. jax.distributed.initialize() finds the pod by itself.
#            Refuses to start a second copy on a worker where one is running.
#   status   the slice's state, and on every worker whether training runs + its last log line.
#   logs     the last $LOG_LINES lines of every worker's log ($WORKER picks one worker).
#   stop     SIGTERM to training on every worker: the trainers save a checkpoint and exit.
#   resume   after a preemption or a delete: a PREEMPTED/TERMINATED slice of that name is deleted
#            (without asking), a missing one created, a READY one reused; then install + train on
#            the same WORKDIR. The trainers resume from the last checkpoint in WORKDIR.
#   delete   gcloud compute tpus tpu-vm delete $TPU_NAME (asks for confirmation).
# Every worker runs the same command and reads its own share of the data; on a multi-host slice
# (size > 8, e.g. v4-16, v5litepod-16) the workdir must be gs:// because all hosts write their
# shards of each checkpoint there.
#
# Variables (environment):
#   TPU_NAME          required. Name of the TPU VM / pod slice.
#   ZONE              required. e.g. us-east5-a.
#   ACCELERATOR_TYPE  required for create/all/resume, e.g. v4-32, v5litepod-16, v5p-64, v6e-16.
#                     Elsewhere optional; given a single-host type, train accepts a local WORKDIR.
#   WORKDIR           required for train/all/resume. Shared gs://bucket/path (a local path only on
#                     a single-host slice whose ACCELERATOR_TYPE is given).
#   CONFIG            config for train (default configs/mqvae_imagenet256.py), with :args allowed.
#   EXTRA_FLAGS       more flags for maskvq_jax.main, e.g. "--config.input.data_dir=gs://b/tfds".
#   PROJECT           gcloud project (default: gcloud's configured one).
#   RUNTIME_VERSION   TPU VM image (default: by generation, see create).
#   SPOT              1: create a spot (preemptible) slice.
#   JAX_VERSION       jax[tpu] version for the workers (default: the jax pin of requirements.txt).
#   PYTHON_VERSION    Python installed with uv on the workers (default 3.12).
#   REPO_URL          git URL cloned on the workers (default: copy this checkout's committed HEAD).
#   REMOTE_DIR        checkout directory on the workers, relative to the home directory
#                     (default maskvq_jax).
#   LOG_DIR           directory of the per-worker logs on the workers, relative to the home
#                     directory (default maskvq_logs).
#   LOG_LINES         lines shown by `logs` (default 50).
#   WORKER            workers that status/logs/stop talk to: all or an index (default all).
#   DRY_RUN           1: print the commands instead of running them.
set -euo pipefail

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/launch/lib.sh"
STEP="${1:-all}"
case "$STEP" in create|install|train|status|logs|stop|resume|delete|all) ;; *)
  die "unknown step '$STEP': choose create, install, train, status, logs, stop, resume, delete or all";; esac
(( $# <= 1 )) || die "one step at a time; extra arguments go in EXTRA_FLAGS (got: $*)"
needs() { local s; for s in "$@"; do [[ "$STEP" == "$s" ]] && return 0; done; return 1; }

[[ -n "${TPU_NAME:-}" ]] || die "TPU_NAME is not set: the TPU VM / pod slice name (e.g. TPU_NAME=mq-v5p-64)"
[[ -n "${ZONE:-}" ]] || die "ZONE is not set: the slice's zone (e.g. ZONE=us-east5-a)"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
CONFIG="${CONFIG:-configs/mqvae_imagenet256.py}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
SPOT="${SPOT:-0}"
JAX_VERSION="${JAX_VERSION:-$(sed -n 's/^jax==\([^ ]*\).*/\1/p' "$REPO/requirements.txt")}"
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
REPO_URL="${REPO_URL:-}"
REMOTE_DIR="${REMOTE_DIR:-maskvq_jax}"
LOG_DIR="${LOG_DIR:-maskvq_logs}"
LOG_LINES="${LOG_LINES:-50}"
WORKER="${WORKER:-all}"
DRY_RUN="${DRY_RUN:-0}"

# ---- fail early
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN=$DRY_RUN must be 0 or 1"
[[ "$SPOT" == 0 || "$SPOT" == 1 ]] || die "SPOT=$SPOT must be 0 or 1"
[[ "$TPU_NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "TPU_NAME=$TPU_NAME: use lower-case letters, digits and '-', starting with a letter"
[[ -n "$JAX_VERSION" ]] || die "JAX_VERSION is not set and no jax== pin was found in $REPO/requirements.txt"
[[ "$JAX_VERSION" =~ ^[0-9][0-9a-z.]*$ ]] || die "JAX_VERSION=$JAX_VERSION is not a version number"
[[ "$PYTHON_VERSION" =~ ^3\.[0-9]+$ ]] && (( ${PYTHON_VERSION#3.} >= 12 )) \
  || die "PYTHON_VERSION=$PYTHON_VERSION must be 3.12 or newer (launch/setup_env.sh needs it)"
for v in REMOTE_DIR LOG_DIR; do
  [[ "${!v}" =~ ^[A-Za-z0-9._][A-Za-z0-9._/-]*$ ]] || die "$v=${!v}: use a plain path (letters, digits, '.', '_', '-', '/')"
done
[[ "$LOG_LINES" =~ ^[1-9][0-9]*$ ]] || die "LOG_LINES=$LOG_LINES must be a positive integer"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "WORKER=$WORKER must be 'all' or a worker index"

KNOWN_GENERATIONS="v4, v5litepod (v5e), v5p, v6e"
runtime_for() {  # $1: generation (the part of ACCELERATOR_TYPE before '-') -> runtime image
  case "$1" in
    v4) echo tpu-ubuntu2204-base;;
    v5litepod|v5e) echo v2-alpha-tpuv5-lite;;
    v5p) echo v2-alpha-tpuv5;;
    v6e) echo v2-alpha-tpuv6e;;
  esac
}
MULTI_HOST=unknown
if [[ -n "$ACCELERATOR_TYPE" ]]; then
  [[ "$ACCELERATOR_TYPE" =~ ^([a-z0-9]+)-([1-9][0-9]*)$ ]] \
    || die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE is not <generation>-<size> (e.g. v5p-64)"
  GENERATION="${BASH_REMATCH[1]}" SIZE="${BASH_REMATCH[2]}"
  DEFAULT_RUNTIME="$(runtime_for "$GENERATION")"
  if [[ -z "$DEFAULT_RUNTIME" && -z "${RUNTIME_VERSION:-}" ]]; then
    die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE: unknown TPU generation '$GENERATION' (known: $KNOWN_GENERATIONS); set RUNTIME_VERSION to use it anyway"
  fi
  RUNTIME_VERSION="${RUNTIME_VERSION:-$DEFAULT_RUNTIME}"
  # The size counts TensorCores (v4, v5p: 8 per host) or chips (v5e, v6e: up to 8 on one host);
  # anything above 8 spans several hosts in every known generation.
  if (( SIZE > 8 )); then MULTI_HOST=1; else MULTI_HOST=0; fi
elif needs create all resume; then
  die "ACCELERATOR_TYPE is not set: needed to create the slice (e.g. ACCELERATOR_TYPE=v5p-64; known generations: $KNOWN_GENERATIONS)"
fi
if needs train all resume; then
  [[ -n "${WORKDIR:-}" ]] || die "WORKDIR is not set: a shared gs://bucket/path for checkpoints and logs"
  if [[ "$WORKDIR" != gs://* && "$MULTI_HOST" != 0 ]]; then
    if [[ "$MULTI_HOST" == 1 ]]; then
      die "WORKDIR=$WORKDIR is not a gs:// path; every worker of the $ACCELERATOR_TYPE pod must write to the same shared workdir"
    fi
    die "WORKDIR=$WORKDIR is not a gs:// path; every worker of a pod must write to the same shared workdir (set ACCELERATOR_TYPE of a single-host slice to use a local path)"
  fi
  require_config
  # shellcheck disable=SC2086  # EXTRA_FLAGS is a list of flags
  reject_set_flags "EXTRA_FLAGS must not contain" $EXTRA_FLAGS
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
on_workers() {  # $1: which workers (all or an index), $2: shell command run on each of them
  run "${GCLOUD[@]}" ssh "$TPU_NAME" "${COMMON[@]}" "--worker=$1" --command "$2"
}
# Remote shell snippets. They run in the worker's home directory; $(hostname) is the worker's.
LOG_VARS="LOG=\"\$(mkdir -p $LOG_DIR && cd $LOG_DIR && pwd)/worker_\$(hostname).log\"; PIDF=\"\${LOG%.log}.pid\""
RUNNING="[ -f \"\$PIDF\" ] && kill -0 \"\$(cat \"\$PIDF\")\" 2>/dev/null"

do_create() {
  local extra=()
  [[ "$SPOT" == 1 ]] && extra=(--spot)
  run "${GCLOUD[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type "$ACCELERATOR_TYPE" \
    --version "$RUNTIME_VERSION" "${extra[@]}"
}

do_install() {
  if [[ -n "$REPO_URL" ]]; then
    on_workers all "set -e; [ -d $REMOTE_DIR/.git ] || git clone $(printf %q "$REPO_URL") $REMOTE_DIR; cd $REMOTE_DIR && git pull --ff-only"
  else  # the committed HEAD of this checkout (git archive: no .venv, no untracked files)
    local tarball="${TMPDIR:-/tmp}/maskvq_src_$$.tar.gz"
    run git -C "$REPO" archive --format=tar.gz -o "$tarball" HEAD
    run "${GCLOUD[@]}" scp "$tarball" "$TPU_NAME:maskvq_src.tar.gz" "${COMMON[@]}" --worker=all
    [[ "$DRY_RUN" == 1 ]] || rm -f "$tarball"
    on_workers all "set -e; mkdir -p $REMOTE_DIR && tar -xzf maskvq_src.tar.gz -C $REMOTE_DIR && rm maskvq_src.tar.gz"
  fi
  # uv brings a Python >= 3.12 (the TPU images have 3.10); setup_env.sh builds .venv with it.
  on_workers all "set -e; export PATH=\"\$HOME/.local/bin:\$PATH\"; \
command -v uv >/dev/null 2>&1 || python3 -m pip install --user -q uv || python3 -m pip install --user -q --break-system-packages uv; \
uv python install $PYTHON_VERSION; PY=\"\$(uv python find $PYTHON_VERSION)\"; \
cd $REMOTE_DIR && PYTHON=\"\$PY\" bash launch/setup_env.sh && \
.venv/bin/python -m pip install -q 'jax[tpu]==$JAX_VERSION' && \
echo \"\$(hostname): \$(.venv/bin/python -c 'import sys, jax; print(sys.version.split()[0], \"jax\", jax.__version__)')\""
}

do_train() {  # $1 (resume only): extra trainer flags
  local main
  main=".venv/bin/python -m maskvq_jax.main --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR") --multihost${EXTRA_FLAGS:+ $EXTRA_FLAGS}${1:+ $1}"
  on_workers all "set -e; $LOG_VARS; \
if $RUNNING; then echo \"\$(hostname): training is already running (pid \$(cat \"\$PIDF\")), log \$LOG\" >&2; exit 1; fi; \
cd $REMOTE_DIR; echo \"== \$(date -u +%FT%TZ) training starts on \$(hostname)\" >> \"\$LOG\"; \
setsid nohup $main >> \"\$LOG\" 2>&1 < /dev/null & echo \$! > \"\$PIDF\"; \
echo \"\$(hostname): training started (pid \$!), log \$LOG\""
}

do_status() {
  run "${GCLOUD[@]}" describe "$TPU_NAME" "${COMMON[@]}" --format "value(state,health,acceleratorType)"
  on_workers "$WORKER" "$LOG_VARS; \
if $RUNNING; then echo \"\$(hostname): training running (pid \$(cat \"\$PIDF\"))\"; else echo \"\$(hostname): training not running\"; fi; \
[ -f \"\$LOG\" ] && tail -n 1 \"\$LOG\" || true"
}

do_logs() {
  on_workers "$WORKER" "$LOG_VARS; echo \"== \$(hostname): \$LOG\"; tail -n $LOG_LINES \"\$LOG\""
}

do_stop() {
  on_workers "$WORKER" "$LOG_VARS; \
if $RUNNING; then kill -TERM \"\$(cat \"\$PIDF\")\" && echo \"\$(hostname): SIGTERM sent; the trainer saves and exits\"; else echo \"\$(hostname): training not running\"; fi"
}

do_resume() {
  local state=""
  if [[ "$DRY_RUN" == 1 ]]; then
    run "${GCLOUD[@]}" describe "$TPU_NAME" "${COMMON[@]}" --format "value(state)"
  else
    state="$("${GCLOUD[@]}" describe "$TPU_NAME" "${COMMON[@]}" --format "value(state)" 2>/dev/null || true)"
  fi
  case "$state" in
    "") do_create;;
    READY) echo "tpu_vm.sh: $TPU_NAME is READY: reusing it" >&2;;
    PREEMPTED|TERMINATED)
      echo "tpu_vm.sh: $TPU_NAME is $state: deleting it, then creating it again" >&2
      run "${GCLOUD[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet
      do_create;;
    *) die "$TPU_NAME is $state: wait until it is READY (or delete it) and run resume again";;
  esac
  do_install
  # A preempted slice never released the workdir lock; take over a stale one (never a live one).
  do_train --config.takeover_lock=True
}

do_delete() {
  run "${GCLOUD[@]}" delete "$TPU_NAME" "${COMMON[@]}"
}

case "$STEP" in
  create) do_create;;
  install) do_install;;
  train) do_train;;
  status) do_status;;
  logs) do_logs;;
  stop) do_stop;;
  resume) do_resume;;
  delete) do_delete;;
  all) do_create; do_install; do_train;;
esac
