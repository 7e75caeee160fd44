"""Launch scripts: DRY_RUN prints the exact commands; missing or bad variables fail early.

Why: a typo in a pod launch is found minutes (and dollars) later; these checks run the scripts'
own validation and command construction without gcloud, SLURM or a second process.
"""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, env, *args):
  clean = {k: v for k, v in os.environ.items()
           if k not in ("WORKDIR", "TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "CONFIG", "PORT",
                        "NUM_PROCESSES", "NODES", "EXTRA_FLAGS", "DRY_RUN", "XLA_FLAGS")}
  p = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], cwd=ROOT,
                     env=dict(clean, **env), capture_output=True, text=True, timeout=60)
  return p.returncode, p.stdout, p.stderr


TPU = dict(TPU_NAME="mq-pod", ZONE="us-east5-a", ACCELERATOR_TYPE="v5p-256",
           WORKDIR="gs://bucket/run", DRY_RUN="1")


def test_tpu_vm_dry_run_all_steps():
  rc, out, err = _run("tpu_vm.sh", dict(TPU, EXTRA_FLAGS="--config.input.data_dir=gs://b/tfds",
                                        SPOT="1"), "all")
  assert rc == 0, err
  lines = out.strip().splitlines()
  assert lines[0].startswith("gcloud compute tpus tpu-vm create mq-pod --zone us-east5-a "
                             "--accelerator-type v5p-256") and "--spot" in lines[0]
  assert all("--worker=all" in l for l in lines if " ssh " in l)
  assert any("launch/setup_env.sh" in l and "jax\\[tpu\\]==0.12.0.1" in l for l in lines)
  train = lines[-1]
  for part in ("-m\\ maskvq_jax.main", "--multihost", "--workdir\\ gs://bucket/run",
               "configs/mqvae_imagenet256.py", "--config.input.data_dir=gs://b/tfds"):
    assert part in train, (part, train)


@pytest.mark.parametrize("env,step,match", [
    (dict(TPU, TPU_NAME=""), "all", "TPU_NAME is not set"),
    (dict(TPU, ZONE=""), "train", "ZONE is not set"),
    (dict(TPU, ACCELERATOR_TYPE=""), "create", "ACCELERATOR_TYPE is not set"),
    (dict(TPU, WORKDIR=""), "train", "WORKDIR is not set"),
    (dict(TPU, WORKDIR="/tmp/local"), "train", "WORKDIR=/tmp/local is not a gs:// path"),
    (dict(TPU, CONFIG="configs/nope.py"), "train", "configs/nope.py not found"),
    (TPU, "launch", "unknown step 'launch'"),
])
def test_tpu_vm_fails_early(env, step, match):
  rc, out, err = _run("tpu_vm.sh", env, step)
  assert rc == 2 and match in err and not out, (rc, out, err)


def test_tpu_vm_steps_need_only_their_variables():
  rc, out, err = _run("tpu_vm.sh", dict(TPU, ACCELERATOR_TYPE="", WORKDIR=""), "install")
  assert rc == 0 and "--worker=all" in out, err


def test_slurm_dry_run_prints_batch_script(tmp_path):
  rc, out, err = _run("slurm_gpu.sh", dict(WORKDIR=str(tmp_path), NODES="4", GPUS_PER_NODE="8",
                                           PARTITION="gpu", DRY_RUN="1",
                                           CONFIG="configs/mqvae_imagenet256.py:keep=0.25"))
  assert rc == 0, err
  for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
               "#SBATCH --partition=gpu", "#SBATCH --signal=TERM@300"):
    assert line in out.splitlines(), line
  srun = [l for l in out.splitlines() if l.startswith("srun ")]
  assert len(srun) == 1 and "-m maskvq_jax.main" in srun[0] and "--multihost" in srun[0]
  assert f"--workdir {tmp_path}" in srun[0] and "configs/mqvae_imagenet256.py:keep=0.25" in srun[0]
  assert out.strip().splitlines()[-1] == f"sbatch {tmp_path}/slurm/job.sbatch"
  assert not os.path.exists(tmp_path / "slurm")  # a dry run writes nothing


@pytest.mark.parametrize("env,match", [
    (dict(), "WORKDIR is not set"),
    (dict(WORKDIR="/tmp/w", NODES="0"), "NODES=0 must be a positive integer"),
    (dict(WORKDIR="/tmp/w", TIME="tomorrow"), "TIME=tomorrow is not a SLURM time"),
    (dict(WORKDIR="/tmp/w", CONFIG="configs/nope.py"), "configs/nope.py not found"),
])
def test_slurm_fails_early(env, match):
  rc, out, err = _run("slurm_gpu.sh", dict(env, DRY_RUN="1"))
  assert rc == 2 and match in err and not out, (rc, out, err)


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


@pytest.mark.parametrize("env,args,match", [
    (dict(), ("--config", "c.py"), "WORKDIR is not set"),
    (dict(WORKDIR="/tmp/w", NUM_PROCESSES="two"), ("--config", "c.py"), "NUM_PROCESSES=two"),
    (dict(WORKDIR="/tmp/w", PORT="70000"), ("--config", "c.py"), "PORT=70000 is not a TCP port"),
    (dict(WORKDIR="/tmp/w"), (), "no arguments for maskvq_jax.main"),
    (dict(WORKDIR="/tmp/w"), ("--config", "c.py", "--workdir=/x"), "do not pass --workdir=/x"),
])
def test_local_multiprocess_fails_early(env, args, match):
  rc, out, err = _run("local_multiprocess.sh", dict(env, DRY_RUN="1"), *args)
  assert rc == 2 and match in err and not out, (rc, out, err)
