#!/usr/bin/env bash
# Runs NUM_PROCESSES copies of `python -m maskvq_jax.main` (or of another entry point, MODULE) on
# THIS machine as one multi-controller JAX job (coordinator on loopback, CPU collectives through gloo). It is the cheapest way to
# exercise the multi-host code paths (per-host data shares, agreed preemption, multi-process Orbax
# saves) without a pod, and what tests/test_multiprocess.py drives.
#
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 WORKDIR=/tmp/mp_run \
#     bash launch/local_multiprocess.sh --config configs/quickstart.py:tiny,perceptual=0
#
# Process i runs
#   XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS JAX_PLATFORMS=$PLATFORM \
#   $PYTHON -m maskvq_jax.main "$@" --workdir $WORKDIR \
#       --coordinator_address=127.0.0.1:$PORT --num_processes=$NUM_PROCESSES --process_id=i
# with its output appended to $LOG_DIR/process_i.log (a rerun keeps the earlier logs). Arguments after the script name go to
# maskvq_jax.main unchanged (--config, --config.* overrides). With MODULE=maskvq_jax.sample,
# maskvq_jax.evaluate or maskvq_jax.tools.export_tokens the arguments go to that CLI unchanged
# (they name their own --workdir / --out) and only the three distributed flags are added:
#   MODULE=maskvq_jax.sample WORKDIR=/tmp/mp_sample bash launch/local_multiprocess.sh \
#     --workdir runs/quickstart/stage2 --num 64 --out /tmp/mp_sample/out If one process fails, the others
# are stopped: SIGTERM, then SIGKILL after STOP_GRACE_S (they would otherwise wait for it in a
# collective until the coordinator times out);
# the script exits with the first non-zero status, or 0 when every process succeeded.
# SIGTERM/SIGINT to the script are forwarded to every process (each saves and exits cleanly).
#
# Variables (environment):
#   WORKDIR              required. Shared workdir of the run (checkpoints, logs); for another
#                        MODULE only the default place of the logs.
#   MODULE               entry point run with -m (default maskvq_jax.main).
#   NUM_PROCESSES        number of processes (default 2).
#   DEVICES_PER_PROCESS  simulated CPU devices per process (default 4); ignored unless PLATFORM=cpu.
#   PLATFORM             JAX_PLATFORMS of the processes (default cpu).
#   PORT                 coordinator port on 127.0.0.1 (default: a free port picked by Python).
#   LOG_DIR              per-process logs (default $WORKDIR/logs/multiprocess; for a remote
#                        WORKDIR such as gs://b/run: $TMPDIR/maskvq_multiprocess_logs/<WORKDIR>).
#   PYTHON               interpreter (default <repo>/.venv/bin/python if present, else python3).
#   DRY_RUN              1: print the commands instead of running them.
#   STOP_GRACE_S         after one process fails, seconds the others get to exit on SIGTERM
#                        before they are killed (default 15; a checkpoint needs every process).
set -euo pipefail

die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/launch/lib.sh"
[[ -n "${WORKDIR:-}" ]] || die "WORKDIR is not set: the shared workdir of the run (e.g. WORKDIR=/tmp/mp_run)"
NUM_PROCESSES="${NUM_PROCESSES:-2}"
DEVICES_PER_PROCESS="${DEVICES_PER_PROCESS:-4}"
PLATFORM="${PLATFORM:-cpu}"
if [[ -z "${LOG_DIR:-}" ]]; then  # process logs are local files: never under a remote URL
  case "$WORKDIR" in
    file://*) LOG_DIR="${WORKDIR#file://}/logs/multiprocess" ;;
    *://*) LOG_DIR="${TMPDIR:-/tmp}/maskvq_multiprocess_logs/$(printf '%s' "$WORKDIR" | tr -c 'A-Za-z0-9._-' '_')" ;;
    *) LOG_DIR="$WORKDIR/logs/multiprocess" ;;
  esac
fi
DRY_RUN="${DRY_RUN:-0}"
STOP_GRACE_S="${STOP_GRACE_S:-15}"
MODULE="${MODULE:-maskvq_jax.main}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

# ---- fail early
[[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || die "NUM_PROCESSES=$NUM_PROCESSES must be a positive integer"
[[ "$DEVICES_PER_PROCESS" =~ ^[1-9][0-9]*$ ]] || die "DEVICES_PER_PROCESS=$DEVICES_PER_PROCESS must be a positive integer"
[[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN=$DRY_RUN must be 0 or 1"
[[ "$STOP_GRACE_S" =~ ^[0-9]+$ ]] || die "STOP_GRACE_S=$STOP_GRACE_S must be a whole number of seconds"
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not executable"
[[ "$MODULE" =~ ^[A-Za-z_][A-Za-z0-9_.]*$ ]] || die "MODULE=$MODULE is not a Python module name"
(( $# > 0 )) || die "no arguments for $MODULE: pass at least --config configs/<x>.py"
for a in "$@"; do
  case "$a" in
    --coordinator_address*|--num_processes*|--process_id*|--multihost*)
      die "do not pass $a: the script sets it (use NUM_PROCESSES / PORT)";;
    --workdir*)
      [[ "$MODULE" != maskvq_jax.main ]] || die "do not pass $a: the script sets it (use WORKDIR)";;
  esac
done
if [[ -z "${PORT:-}" ]]; then
  PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$PORT" =~ ^[0-9]+$ ]] && (( PORT > 0 && PORT < 65536 )) || die "PORT=$PORT is not a TCP port"

cmd_for() {  # $1: process id, then the arguments for maskvq_jax.main -> CMD array
  local id="$1"; shift
  local workdir=()
  [[ "$MODULE" != maskvq_jax.main ]] || workdir=(--workdir "$WORKDIR")
  CMD=(env "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
       "JAX_PLATFORMS=$PLATFORM" "$PYTHON" -m "$MODULE" "$@" "${workdir[@]}"
       "--coordinator_address=127.0.0.1:$PORT" "--num_processes=$NUM_PROCESSES" "--process_id=$id")
}

cd "$REPO"
if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM_PROCESSES; i++)); do
    cmd_for "$i" "$@"
    printf '%q ' "${CMD[@]}"; echo ">> $LOG_DIR/process_$i.log 2>&1 &"
  done
  exit 0
fi

mkdir -p "$LOG_DIR"
PIDS=()
stop_all() {  # $1: signal
  for p in "${PIDS[@]}"; do kill -"$1" "$p" 2>/dev/null || true; done
}
trap 'stop_all TERM' TERM INT
for ((i = 0; i < NUM_PROCESSES; i++)); do
  cmd_for "$i" "$@"
  # appended: a rerun (resume after a preemption) keeps the earlier launches' logs
  echo "===== local_multiprocess.sh: process $i/$NUM_PROCESSES started $(date -u '+%Y-%m-%d %H:%M:%S UTC')" >> "$LOG_DIR/process_$i.log"
  "${CMD[@]}" >> "$LOG_DIR/process_$i.log" 2>&1 &
  PIDS+=("$!")
done
echo "local_multiprocess.sh: ${#PIDS[@]} processes (pids ${PIDS[*]}), coordinator 127.0.0.1:$PORT, logs in $LOG_DIR" >&2

# Wait for every process; on the first failure stop the rest so nobody hangs in a collective.
# SIGTERM alone does not stop them: with JAX's preemption service (the default) it only asks for a
# checkpoint at an agreed step, which the failed process never reaches, so the survivors waited
# for the coordinator's heartbeat time-out (~1 min) and then aborted. Whoever is still running
# STOP_GRACE_S seconds after the TERM is killed.
STATUS=0
KILL_AT=0
REMAINING=("${PIDS[@]}")
while (( ${#REMAINING[@]} > 0 )); do
  NEXT=()
  for p in "${REMAINING[@]}"; do
    if kill -0 "$p" 2>/dev/null; then NEXT+=("$p"); continue; fi
    rc=0; wait "$p" || rc=$?
    if (( rc != 0 && STATUS == 0 )); then
      STATUS=$rc
      echo "local_multiprocess.sh: process pid $p exited with status $rc; stopping the others (see $LOG_DIR)" >&2
      stop_all TERM
      KILL_AT=$((SECONDS + STOP_GRACE_S))
    fi
  done
  REMAINING=("${NEXT[@]+"${NEXT[@]}"}")
  if (( KILL_AT > 0 && SECONDS >= KILL_AT && ${#REMAINING[@]} > 0 )); then
    echo "local_multiprocess.sh: killing pids ${REMAINING[*]}, still running ${STOP_GRACE_S} s after the stop" >&2
    for p in "${REMAINING[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    KILL_AT=0
  fi
  (( ${#REMAINING[@]} > 0 )) && sleep 0.5
done
exit "$STATUS"
