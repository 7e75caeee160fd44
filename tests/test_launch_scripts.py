"""Launch scripts: DRY_RUN prints the exact commands; missing or bad variables fail early.

Why: a typo in a pod launch is found minutes (and dollars) later; these checks run the scripts'
own validation and command construction without gcloud, SLURM or a second machine. The commands
meant for the TPU workers and the SLURM batch script are also run here, against stub programs
(a fake trainer, fake srun/scancel/scontrol), to check the detached start and the
signal -> save -> requeue sequence.
"""
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_VARS = ("WORKDIR", "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "CONFIG", "PORT", "NUM_PROCESSES",
               "NODES", "GPUS_PER_NODE", "CPUS_PER_TASK", "EXTRA_FLAGS", "DRY_RUN", "XLA_FLAGS",
               "RUNTIME_VERSION", "SPOT", "JAX_VERSION", "PYTHON_VERSION", "REPO_URL", "REMOTE_DIR",
               "LOG_DIR", "LOG_LINES", "WORKER", "PROJECT", "SIGNAL_SECS", "MAX_REQUEUES", "TIME",
               "PARTITION", "ACCOUNT", "JOB_NAME", "SBATCH_FILE", "PYTHON")


def _clean_env(**env):
  clean = {k: v for k, v in os.environ.items()
           if k not in SCRIPT_VARS and not k.startswith("SLURM_")}
  return dict(clean, **env)


def _run(script, env, *args):
  p = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                     env=_clean_env(**env), capture_output=True, text=True, timeout=60)
  return p.returncode, p.stdout, p.stderr


def _jax_pin():
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    return re.search(r"^jax==(\S+)$", f.read(), re.M).group(1)


def _bash_syntax_ok(code):
  p = subprocess.run(["bash", "-n", "-c", code], capture_output=True, text=True)
  return p.returncode == 0, p.stderr


# ============================================================================ TPU VM
TPU = dict(TPU_NAME="mq-pod", ZONE="us-east5-a", ACCELERATOR_TYPE="v5p-256",
           WORKDIR="gs://bucket/run", DRY_RUN="1")


def _tpu_commands(env, step):
  """The dry run's commands as argv lists, and the remote --command of every ssh among them."""
  rc, out, err = _run("tpu_vm.sh", env, step)
  assert rc == 0, err
  argvs = [shlex.split(l) for l in out.strip().splitlines()]
  remote = [a[a.index("--command") + 1] for a in argvs if a[4:5] == ["ssh"]]
  for r in remote:
    ok, msg = _bash_syntax_ok(r)
    assert ok, (msg, r)
  return argvs, remote


def _flag(argv, name):
  return argv[argv.index(name) + 1]


@pytest.mark.parametrize("accel,version", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-64", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"),
])
def test_tpu_vm_generation_picks_runtime_and_full_run(accel, version):
  argvs, remote = _tpu_commands(dict(TPU, ACCELERATOR_TYPE=accel,
                                     EXTRA_FLAGS="--config.input.data_dir=gs://b/tfds"), "all")
  create = argvs[0]
  assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"] and create[5] == "mq-pod"
  assert _flag(create, "--accelerator-type") == accel and _flag(create, "--version") == version
  assert _flag(create, "--zone") == "us-east5-a" and "--spot" not in create
  ssh = [a for a in argvs if a[4:5] == ["ssh"]]
  assert ssh and all("--worker=all" in a for a in ssh)
  # install: uv, then Python 3.12 through uv, setup_env.sh on that Python, jax[tpu] at the pin
  install = [r for r in remote if "setup_env.sh" in r]
  assert len(install) == 1
  inst = install[0]
  assert re.search(r"pip install --user -q uv", inst), inst
  assert "uv python install 3.12" in inst and 'PY="$(uv python find 3.12)"' in inst
  assert 'PYTHON="$PY" bash launch/setup_env.sh' in inst
  assert f"pip install -q 'jax[tpu]=={_jax_pin()}'" in inst
  assert inst.index("uv python install") < inst.index("setup_env.sh") < inst.index("jax[tpu]")
  # train: last command, detached on every worker with a per-worker log
  train = remote[-1]
  assert argvs[-1][4] == "ssh" and "--worker=all" in argvs[-1]
  assert "worker_$(hostname).log" in train and "setsid nohup .venv/bin/python" in train
  assert re.search(r'>> "\$LOG" 2>&1 < /dev/null &', train), train
  for part in ("-m maskvq_jax.main", "--config configs/mqvae_imagenet256.py",
               "--workdir gs://bucket/run", "--multihost", "--config.input.data_dir=gs://b/tfds"):
    assert part in train, (part, train)


def test_tpu_vm_spot_and_runtime_override():
  argvs, _ = _tpu_commands(dict(TPU, ACCELERATOR_TYPE="v5p-64", SPOT="1",
                                RUNTIME_VERSION="v2-alpha-tpuv5-custom"), "create")
  assert len(argvs) == 1 and "--spot" in argvs[0]
  assert _flag(argvs[0], "--version") == "v2-alpha-tpuv5-custom"


def test_tpu_vm_unknown_generation_fails_with_known_list():
  rc, out, err = _run("tpu_vm.sh", dict(TPU, ACCELERATOR_TYPE="v3-8"), "create")
  assert rc == 2 and not out
  assert err.strip() == ("tpu_vm.sh: ACCELERATOR_TYPE=v3-8: unknown TPU generation 'v3' (known: "
                         "v4, v5litepod (v5e), v5p, v6e); set RUNTIME_VERSION to use it anyway")
  # an explicit runtime image lets a generation the script does not know through
  argvs, _ = _tpu_commands(dict(TPU, ACCELERATOR_TYPE="v3-8", RUNTIME_VERSION="tpu-vm-base"),
                           "create")
  assert _flag(argvs[0], "--version") == "tpu-vm-base"


def test_tpu_vm_resume_recreates_installs_and_trains_on_same_workdir():
  argvs, remote = _tpu_commands(dict(TPU, ACCELERATOR_TYPE="v6e-16"), "resume")
  verbs = [a[4] for a in argvs if a[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]
  assert verbs[:2] == ["describe", "create"] and verbs[-1] == "ssh"
  assert any("setup_env.sh" in r for r in remote)
  assert "--workdir gs://bucket/run" in remote[-1] and "setsid nohup" in remote[-1]
  assert "--config.takeover_lock=True" in remote[-1]  # the preempted run left a stale lock
  _, train = _tpu_commands(dict(TPU, ACCELERATOR_TYPE="v6e-16"), "train")
  assert "takeover_lock" not in train[-1]  # a plain train never takes over


@pytest.mark.parametrize("step,worker,needle", [
    ("status", "all", "training running"),
    ("logs", "3", "tail -n 7"),
    ("stop", "all", "kill -TERM"),
])
def test_tpu_vm_watch_steps(step, worker, needle):
  env = dict(TPU_NAME="mq-pod", ZONE="us-east5-a", DRY_RUN="1", WORKER=worker, LOG_LINES="7")
  argvs, remote = _tpu_commands(env, step)  # needs neither ACCELERATOR_TYPE nor WORKDIR
  assert argvs[-1][4] == "ssh" and f"--worker={worker}" in argvs[-1]
  assert needle in remote[-1] and "worker_$(hostname).log" in remote[-1]


def test_tpu_vm_local_workdir_only_on_single_host():
  _tpu_commands(dict(TPU, ACCELERATOR_TYPE="v5litepod-8", WORKDIR="/tmp/run"), "train")
  rc, out, err = _run("tpu_vm.sh", dict(TPU, ACCELERATOR_TYPE="v4-16", WORKDIR="/tmp/run"), "train")
  assert rc == 2 and "WORKDIR=/tmp/run is not a gs:// path" in err and "v4-16" in err, err


@pytest.mark.parametrize("env,step,match", [
    (dict(TPU, TPU_NAME=""), "all", "TPU_NAME is not set"),
    (dict(TPU, ZONE=""), "train", "ZONE is not set"),
    (dict(TPU, ACCELERATOR_TYPE=""), "create", "ACCELERATOR_TYPE is not set"),
    (dict(TPU, ACCELERATOR_TYPE=""), "resume", "ACCELERATOR_TYPE is not set"),
    (dict(TPU, ACCELERATOR_TYPE="v5p"), "create", "ACCELERATOR_TYPE=v5p is not <generation>-<size>"),
    (dict(TPU, WORKDIR=""), "train", "WORKDIR is not set"),
    (dict(TPU, WORKDIR=""), "resume", "WORKDIR is not set"),
    (dict(TPU, WORKDIR="/tmp/local"), "train", "WORKDIR=/tmp/local is not a gs:// path"),
    (dict(TPU, ACCELERATOR_TYPE="", WORKDIR="/tmp/local"), "train",
     "WORKDIR=/tmp/local is not a gs:// path"),
    (dict(TPU, CONFIG="configs/nope.py"), "train", "configs/nope.py not found"),
    (dict(TPU, EXTRA_FLAGS="--workdir=/x"), "train", "EXTRA_FLAGS must not contain --workdir=/x"),
    (dict(TPU, PYTHON_VERSION="3.10"), "install", "PYTHON_VERSION=3.10 must be 3.12 or newer"),
    (dict(TPU, WORKER="first"), "logs", "WORKER=first must be 'all' or a worker index"),
    (dict(TPU, LOG_DIR="a b"), "logs", "LOG_DIR=a b: use a plain path"),
    (TPU, "launch", "unknown step 'launch'"),
])
def test_tpu_vm_fails_early(env, step, match):
  rc, out, err = _run("tpu_vm.sh", env, step)
  assert rc == 2 and match in err and not out, (rc, out, err)
  assert len(err.strip().splitlines()) == 1, err


def test_tpu_vm_steps_need_only_their_variables():
  rc, out, err = _run("tpu_vm.sh", dict(TPU, ACCELERATOR_TYPE="", WORKDIR=""), "install")
  assert rc == 0 and "--worker=all" in out, err


def test_tpu_vm_train_command_detaches_logs_and_stops(tmp_path):
  """Runs the generated worker commands in a fake home: a stub trainer keeps running after the
  ssh command returned, writes to worker_<hostname>.log, a second start is refused, stop = TERM."""
  home = tmp_path / "home"
  venv_bin = home / "maskvq_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "python").write_text(
      "#!/usr/bin/env bash\necho \"trainer args: $*\"\n"
      "trap 'echo trainer got TERM; exit 0' TERM\nwhile :; do sleep 0.1; done\n")
  (venv_bin / "python").chmod(0o755)
  env = dict(TPU_NAME="mq-pod", ZONE="z", WORKDIR="gs://b/run", DRY_RUN="1")
  train = _tpu_commands(env, "train")[1][-1]
  stop = _tpu_commands(env, "stop")[1][-1]
  status = _tpu_commands(env, "status")[1][-1]
  host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
  log = home / "maskvq_logs" / f"worker_{host}.log"
  pidf = home / "maskvq_logs" / f"worker_{host}.pid"

  def remote(cmd):
    return subprocess.run(["bash", "-c", cmd], cwd=home, env=_clean_env(HOME=str(home)),
                          capture_output=True, text=True, timeout=20)

  pid = None
  try:
    t0 = time.time()
    p = remote(train)
    assert p.returncode == 0 and "training started" in p.stdout, (p.stdout, p.stderr)
    assert time.time() - t0 < 10  # the ssh command does not wait for training
    pid = int(pidf.read_text())
    for _ in range(100):
      if "trainer args" in log.read_text():
        break
      time.sleep(0.05)
    assert "--workdir gs://b/run --multihost" in log.read_text()
    os.kill(pid, 0)  # still running after the command returned
    assert os.getsid(pid) == pid  # own session: a dropped ssh connection's SIGHUP misses it
    p = remote(train)
    assert p.returncode == 1 and "already running" in p.stderr, (p.stdout, p.stderr)
    assert "training running" in remote(status).stdout
    p = remote(stop)
    assert p.returncode == 0 and "SIGTERM sent" in p.stdout, (p.stdout, p.stderr)
    for _ in range(100):
      if "trainer got TERM" in log.read_text():
        break
      time.sleep(0.05)
    assert "trainer got TERM" in log.read_text()
  finally:
    if pid is not None:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass


# ============================================================================ SLURM
SLURM = dict(NODES="4", GPUS_PER_NODE="8", PARTITION="gpu", DRY_RUN="1",
             CONFIG="configs/mqvae_imagenet256.py:keep=0.25")


def _slurm_script(tmp_path, **env):
  rc, out, err = _run("slurm_gpu.sh", dict(SLURM, WORKDIR=str(tmp_path / "wd"), **env))
  assert rc == 0, err
  lines = out.strip().splitlines()
  assert lines[-1] == f"sbatch {tmp_path}/wd/slurm/job.sbatch"
  return "\n".join(lines[:-1]) + "\n"


def test_slurm_dry_run_prints_batch_script(tmp_path):
  script = _slurm_script(tmp_path, SIGNAL_SECS="600")
  lines = script.splitlines()
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=gpu", "#SBATCH --signal=B:USR1@600", "#SBATCH --requeue",
               "#SBATCH --open-mode=append"):
    assert line in lines, line
  ok, msg = _bash_syntax_ok(script)
  assert ok, msg
  # every GPU of a node goes to JAX: 8 tasks per node, none bound to a subset of the GPUs
  srun = [l for l in lines if l.startswith("srun ")]
  assert len(srun) == 1 and "--gpu-bind=none" in srun[0] and "--gpus-per-task" not in script
  assert "-m maskvq_jax.main" in srun[0] and "--multihost" in srun[0]
  assert f"--workdir {tmp_path}/wd" in srun[0] and "configs/mqvae_imagenet256.py:keep=0.25" in srun[0]
  assert srun[0].endswith(" &")
  # the traps forward SIGTERM to the tasks and requeue
  assert "trap 'forward_term USR1' USR1" in lines and "trap 'forward_term TERM' TERM" in lines
  assert 'scancel --signal=TERM "$SLURM_JOB_ID"' in script
  assert 'scontrol requeue "$SLURM_JOB_ID"' in script
  assert not os.path.exists(tmp_path / "wd")  # a dry run writes nothing


@pytest.mark.parametrize("env,match", [
    (dict(), "WORKDIR is not set"),
    (dict(WORKDIR="/tmp/w", NODES="0"), "NODES=0 must be a positive integer"),
    (dict(WORKDIR="/tmp/w", SIGNAL_SECS="soon"), "SIGNAL_SECS=soon must be a positive integer"),
    (dict(WORKDIR="/tmp/w", MAX_REQUEUES="-1"), "MAX_REQUEUES=-1 must be a non-negative integer"),
    (dict(WORKDIR="/tmp/w", TIME="tomorrow"), "TIME=tomorrow is not a SLURM time"),
    (dict(WORKDIR="/tmp/w", CONFIG="configs/nope.py"), "configs/nope.py not found"),
    (dict(WORKDIR="/tmp/w", EXTRA_FLAGS="--multihost"), "EXTRA_FLAGS must not contain --multihost"),
])
def test_slurm_fails_early(env, match):
  rc, out, err = _run("slurm_gpu.sh", dict(env, DRY_RUN="1"))
  assert rc == 2 and match in err and not out, (rc, out, err)
  assert len(err.strip().splitlines()) == 1, err


def test_slurm_writes_and_submits(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "sbatch").write_text("#!/usr/bin/env bash\necho \"Submitted batch job 7 ($1)\"\n")
  (fake / "sbatch").chmod(0o755)
  env = dict(SLURM, DRY_RUN="0", WORKDIR=str(tmp_path / "wd"), PYTHON="/bin/true",
             PATH=f"{fake}:{os.environ['PATH']}")
  rc, out, err = _run("slurm_gpu.sh", env)
  assert rc == 0 and out.strip() == f"Submitted batch job 7 ({tmp_path}/wd/slurm/job.sbatch)", err
  assert (tmp_path / "wd" / "slurm" / "job.sbatch").read_text() == _slurm_script(tmp_path, PYTHON="/bin/true")


# Stubs: srun starts one "task" that saves and exits TASK_RC on SIGTERM, or ends by itself after
# TASK_SECS; like the real srun, a SIGTERM to srun itself kills its tasks (SIGKILL). scancel
# --signal=TERM delivers SIGTERM to the task, as slurmd would. Every call is recorded in CALLS.
_FAKE_SRUN = r"""#!/usr/bin/env bash
echo "srun $*" >> "$CALLS"
trap 'echo "srun got TERM" >> "$CALLS"; kill -KILL "$task"; exit 143' TERM
bash -c 'trap "echo task got TERM >> \"\$CALLS\"; exit \$TASK_RC" TERM
         echo $$ > "$FAKE_DIR/task.pid"; echo task started >> "$CALLS"
         for ((i = 0; i < TASK_SECS * 10; i++)); do sleep 0.1; done' &
task=$!
wait "$task"
"""
_FAKE_SCANCEL = r"""#!/usr/bin/env bash
echo "scancel $*" >> "$CALLS"
[[ "$1" == --signal=TERM ]] && kill -TERM "$(cat "$FAKE_DIR/task.pid")"
exit 0
"""
_FAKE_SCONTROL = """#!/usr/bin/env bash\necho "scontrol $*" >> "$CALLS"\n"""


@pytest.mark.parametrize("case,sig,task_secs,task_rc,restarts,want_requeue,want_rc", [
    ("time_limit", signal.SIGUSR1, 20, 0, 0, True, 0),
    ("finished", None, 0, 0, 0, False, 0),
    ("save_failed", signal.SIGUSR1, 20, 1, 0, False, 1),
    ("cancelled", signal.SIGTERM, 20, 0, 0, False, 0),
    ("max_requeues", signal.SIGUSR1, 20, 0, 3, False, 0),
])
def test_slurm_batch_script_signal_and_requeue(tmp_path, case, sig, task_secs, task_rc, restarts,
                                               want_requeue, want_rc):
  del case
  script = tmp_path / "job.sbatch"
  script.write_text(_slurm_script(tmp_path, MAX_REQUEUES="3"))
  fake = tmp_path / "bin"
  fake.mkdir()
  for name, body in (("srun", _FAKE_SRUN), ("scancel", _FAKE_SCANCEL),
                     ("scontrol", _FAKE_SCONTROL)):
    (fake / name).write_text(body)
    (fake / name).chmod(0o755)
  calls = tmp_path / "calls.txt"
  calls.write_text("")
  env = _clean_env(PATH=f"{fake}:{os.environ['PATH']}", CALLS=str(calls), FAKE_DIR=str(tmp_path),
                   TASK_SECS=str(task_secs), TASK_RC=str(task_rc), SLURM_JOB_ID="4242",
                   SLURM_RESTART_COUNT=str(restarts))
  proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    if sig is not None:
      for _ in range(200):
        if "task started" in calls.read_text():
          break
        time.sleep(0.05)
      assert "task started" in calls.read_text()
      proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
  finally:
    if proc.poll() is None:
      proc.kill()
    pidf = tmp_path / "task.pid"
    if pidf.exists():
      try:
        os.kill(int(pidf.read_text()), signal.SIGKILL)
      except (ProcessLookupError, ValueError):
        pass
  recorded = calls.read_text().splitlines()
  assert proc.returncode == want_rc, (recorded, err)
  assert recorded[0].startswith("srun --kill-on-bad-exit=1 --gpu-bind=none ")
  # a requeued run (after a crash the dead run's workdir lock is stale) takes over a stale lock
  assert recorded[0].endswith(" --config.takeover_lock=True") == (restarts > 0), recorded[0]
  assert "srun got TERM" not in recorded  # srun would SIGKILL its tasks: never signal it
  if sig is None:
    assert recorded == [recorded[0], "task started"], recorded
  else:
    assert "scancel --signal=TERM 4242" in recorded and "task got TERM" in recorded, recorded
  assert ("scontrol requeue 4242" in recorded) == want_requeue, (recorded, err)
  if want_requeue:
    assert recorded[-1] == "scontrol requeue 4242"
    assert recorded.index("task got TERM") < recorded.index("scontrol requeue 4242")


# ============================================================================ one machine
def test_local_multiprocess_dry_run(tmp_path):
  rc, out, err = _run("local_multiprocess.sh", dict(WORKDIR=str(tmp_path), NUM_PROCESSES="3",
                                                    DEVICES_PER_PROCESS="2", PORT="12345",
                                                    DRY_RUN="1"),
                      "--config", "configs/quickstart.py:tiny")
  assert rc == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 3
  for i, line in enumerate(lines):
    for part in ("--xla_force_host_platform_device_count=2", "JAX_PLATFORMS=cpu",
                 "-m maskvq_jax.main --config configs/quickstart.py:tiny",
                 f"--workdir {tmp_path}", "--coordinator_address=127.0.0.1:12345",
                 "--num_processes=3", f"--process_id={i}", f"process_{i}.log"):
      assert part in line, (part, line)
  assert not os.path.exists(tmp_path / "logs")


@pytest.mark.parametrize("workdir,logs", [
    ("gs://bucket/run", "{tmp}/maskvq_multiprocess_logs/gs___bucket_run"),
    ("file://{tmp}/w", "{tmp}/w/logs/multiprocess"),
])
def test_local_multiprocess_url_workdir_logs_stay_local(tmp_path, workdir, logs):
  workdir, logs = workdir.format(tmp=tmp_path), logs.format(tmp=tmp_path)
  rc, out, err = _run("local_multiprocess.sh", dict(WORKDIR=workdir, PORT="12345", DRY_RUN="1",
                                                    TMPDIR=str(tmp_path)),
                      "--config", "configs/quickstart.py:tiny")
  assert rc == 0, err
  for i, line in enumerate(out.strip().splitlines()):
    assert f"--workdir {workdir} " in line and line.endswith(f"> {logs}/process_{i}.log 2>&1 &")


def test_local_multiprocess_dry_run_other_module(tmp_path):
  rc, out, err = _run("local_multiprocess.sh", dict(WORKDIR=str(tmp_path), PORT="12345", DRY_RUN="1",
                                                    MODULE="maskvq_jax.sample"),
                      "--workdir", "runs/s2", "--num", "4", "--out", "o")
  assert rc == 0, err
  lines = out.strip().splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert "-m maskvq_jax.sample --workdir runs/s2 --num 4 --out o --coordinator_address=" in line
    assert f"--process_id={i}" in line and line.count("--workdir") == 1, line


def test_local_multiprocess_kills_survivors_that_ignore_term(tmp_path):
  """One process fails; the others ignore SIGTERM (as under JAX's preemption service, where TERM
  only asks for a checkpoint at a step the failed process never reaches): they are killed
  STOP_GRACE_S after the stop instead of waiting for the coordinator's time-out."""
  stub = tmp_path / "python"
  stub.write_text("#!/usr/bin/env bash\n"
                  "case \"$*\" in *--process_id=1*) sleep 0.5; exit 3;; esac\n"
                  "trap 'echo got TERM' TERM\n"
                  "for i in $(seq 1 600); do sleep 0.1; done\n"
                  "echo survived\n")
  stub.chmod(0o755)
  t0 = time.time()
  rc, _, err = _run("local_multiprocess.sh", dict(WORKDIR=str(tmp_path), NUM_PROCESSES="3",
                                                  PORT="12345", PYTHON=str(stub),
                                                  STOP_GRACE_S="1"),
                    "--config", "configs/quickstart.py:tiny")
  assert rc == 3, err
  assert time.time() - t0 < 30, err
  assert "exited with status 3" in err and "killing pids" in err, err
  for i in (0, 2):
    log = (tmp_path / "logs" / "multiprocess" / f"process_{i}.log").read_text()
    assert "got TERM" in log and "survived" not in log, log


@pytest.mark.parametrize("env,args,match", [
    (dict(WORKDIR="/tmp/w", MODULE="not a module"), ("--num", "1"), "MODULE=not a module"),
    (dict(), ("--config", "c.py"), "WORKDIR is not set"),
    (dict(WORKDIR="/tmp/w", NUM_PROCESSES="two"), ("--config", "c.py"), "NUM_PROCESSES=two"),
    (dict(WORKDIR="/tmp/w", PORT="70000"), ("--config", "c.py"), "PORT=70000 is not a TCP port"),
    (dict(WORKDIR="/tmp/w"), (), "no arguments for maskvq_jax.main"),
    (dict(WORKDIR="/tmp/w"), ("--config", "c.py", "--workdir=/x"), "do not pass --workdir=/x: the script sets it"),
])
def test_local_multiprocess_fails_early(env, args, match):
  rc, out, err = _run("local_multiprocess.sh", dict(env, DRY_RUN="1"), *args)
  assert rc == 2 and match in err and not out, (rc, out, err)
