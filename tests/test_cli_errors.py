"""Every entry point answers a user's mistake with one `error:` line, exit 2, and writes nothing.

Each case runs the CLI as a subprocess, as a user would, and checks the exact first line of stderr,
that there is no traceback, and that the workdir / output it was given does not exist afterwards.
Most cases fail before jax or TensorFlow is imported (core/cli.py checks the config file and its
overrides first), so they take well under a second each.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from maskvq_jax.core import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_CKPT = ("{t}/empty holds no tokenizer or trainer checkpoint (looked for "
           "<dir>/checkpoints/<step>/state, <dir>/<step>/variables and <dir>/tokenizer/)")
# (module, argv, first stderr line); "{t}" is the test's tmp_path. Each run must leave {t}/out
# absent (every case names it as its workdir / output / data_dir where it has one).
CASES = [
    # ----- training: the examples, all before jax is imported
    ("maskvq_jax.main", "--config configs/nope.py --workdir {t}/out",
     "error: --config: no such config file: configs/nope.py"),
    ("maskvq_jax.main", "--config configs/quickstrt.py --workdir {t}/out",
     "error: --config: no such config file: configs/quickstrt.py; did you mean quickstart.py, "
     "quickstart_stage2.py?"),
    ("maskvq_jax.main", "--config configs/quickstart.py:keep=abc --workdir {t}/out",
     "error: keep: expected a float in (0, 1], got 'abc'"),
    ("maskvq_jax.main", "--config configs/quickstart.py:keep=1.5 --workdir {t}/out",
     "error: keep: expected a float in (0, 1], got '1.5'"),
    ("maskvq_jax.main", "--config configs/quickstart.py:steps=0 --workdir {t}/out",
     "error: steps: expected an int >= 1, got '0'"),
    ("maskvq_jax.main", "--config configs/mqvae_ffhq256.py:dense=maybe --workdir {t}/out",
     "error: dense: expected true or false, got 'maybe'"),
    ("maskvq_jax.main", "--config configs/vqgan_imagenet256.py:rules=ddp --workdir {t}/out",
     "error: rules: expected one of dp, fsdp, fsdp_tp, got 'ddp'"),
    ("maskvq_jax.main", "--config configs/quickstart_stage2.py:cond=image --workdir {t}/out",
     "error: cond: expected one of class, text, none, got 'image'"),
    ("maskvq_jax.main", "--config configs/quickstart.py:kep=0.5 --workdir {t}/out",
     "error: unknown config argument 'kep'; did you mean keep? known: dense, keep, perceptual, "
     "rules, scorer, steps, tiny"),
    ("maskvq_jax.main", "--config configs/quickstart.py --config.optim.lrr=1 --workdir {t}/out",
     "error: --config.optim.lrr: no such config field; did you mean --config.optim.lr?"),
    ("maskvq_jax.main", "--config configs/quickstart.py --config.optimm.lr=1 --workdir {t}/out",
     "error: --config.optimm.lr: no such config field; did you mean --config.optim.lr?"),
    ("maskvq_jax.main", "--config configs/quickstart.py --config.optim.lr=abc --workdir {t}/out",
     "error: --config.optim.lr: expected a float, got 'abc'"),
    ("maskvq_jax.main", "--config configs/quickstart.py --config.total_steps=1.5 --workdir {t}/out",
     "error: --config.total_steps: expected an int, got '1.5'"),
    # after the flags are parsed (jax imported, no device touched)
    ("maskvq_jax.main", "--config configs/quickstart.py", "error: --workdir is required"),
    ("maskvq_jax.main", "--config configs/quickstart.py --workdir nofs://b/{t}/out",
     "error: --workdir='nofs://b/{t}/out': no filesystem for nofs:// URLs (use a local path, "
     "file://, gs:// or another scheme etils.epath knows)"),
    ("maskvq_jax.main", "--config configs/quickstart.py --config.resume=nofs://b/r "
     "--workdir {t}/out",
     "error: config.resume='nofs://b/r': no filesystem for nofs:// URLs (use a local path, "
     "file://, gs:// or another scheme etils.epath knows)"),
    # ----- plan
    ("maskvq_jax.tools.plan", "--config configs/nope.py --mesh data=4",
     "error: --config: no such config file: configs/nope.py"),
    ("maskvq_jax.tools.plan", "--config configs/quickstart.py --mesh data=x",
     "error: --mesh='data=x': 'data=x' is not name=<positive int>"),
    # ----- dataset builder (both module paths); flag checks come before TFDS is imported
    ("maskvq_jax.data.build", "--name nosuchdataset --data_dir {t}/out",
     "error: unknown dataset 'nosuchdataset'; known: shapes/32, shapes/64, shapes/256, emoji/16, "
     "emoji/32, emoji/64, "
     "image_folder/ffhq, image_folder/<name>, or a TFDS catalog name (imagenet2012, "
     "coco_captions, ...)"),
    ("maskvq_jax.datasets.build", "--name shapes/33 --data_dir {t}/out",
     "error: --name='shapes/33': expected shapes/<32|64|256>"),
    ("maskvq_jax.data.build", "--name image_folder/mine --folder {t}/none --data_dir {t}/out",
     "error: image folder {t}/none does not exist"),
    ("maskvq_jax.data.build", "--name shapes/32 --reszie 3 --data_dir {t}/out",
     "error: Unknown command line flag 'reszie'. Did you mean: resize ?"),
    # ----- golden checks and conversion
    ("maskvq_jax.tools.check_golden", "{t}/notes.txt",
     "error: {t}/notes.txt: not an .npz archive (a golden file from the authors' code)"),
    ("maskvq_jax.tools.check_golden", "{t}/other.npz",
     "error: {t}/other.npz: no golden keys to check; expected in/x + sd/encoder.conv_in.weight "
     "(mqvae); or out/gpt/* or out/gpt_class/* (stackformer); or out/pool3 (fid_inception); "
     "found weights"),
    ("maskvq_jax.tools.check_golden", "{t}/missing.npz", "error: {t}/missing.npz: no such file"),
    ("maskvq_jax.tools.check_golden", "--rtol abc {t}/other.npz",
     "error: argument --rtol: invalid float value: 'abc'"),
    ("maskvq_jax.tools.convert_official", "--ckpt {t}/missing.npz --out {t}/out",
     "error: --ckpt='{t}/missing.npz': no such file"),
    ("maskvq_jax.tools.convert_official", "--ckpt {t}/other.npz --out {t}/out",
     "error: {t}/other.npz has no meta/config_json; pass --config"),
    ("maskvq_jax.tools.fetch_weights", "--inception_pt {t}/missing.pt --cache_dir {t}/out",
     "error: --inception_pt file not found: {t}/missing.pt"),
    # ----- reports, sampling, evaluation, token export, quickstart
    ("maskvq_jax.tools.ablation_report", "--output {t}/out/x.md",
     "error: the following arguments are required: --workdirs"),
    ("maskvq_jax.tools.ablation_report", "--workdirs {t}/empty --output {t}/out/x.md",
     "error: {t}/empty: no evaluation report and no readable checkpoint (" + NO_CKPT + ")"),
    ("maskvq_jax.sample", "--workdir {t}/empty --num 4 --out {t}/out",
     "error: " + NO_CKPT),
    ("maskvq_jax.evaluate", "--samples {t}/empty --metrics fid,bogus --output {t}/out/r.json",
     "error: --metrics: unknown ['bogus']; choose from fid,is,pr,rfid,psnr,ssim,lpips,usage,mask"),
    ("maskvq_jax.tools.export_tokens", "--tokenizer_workdir {t}/empty --out {t}/out",
     "error: " + NO_CKPT),
    ("maskvq_jax.tools.quickstart", "--workdir {t}/out --tiny --stage1 tiny,keep=2",
     "error: keep: expected a float in (0, 1], got '2'"),
]


def _ids():
  return [f"{i:02d}-{m.rsplit('.', 1)[-1]}" for i, (m, _, _) in enumerate(CASES)]


@pytest.mark.parametrize("module,argv,first_line", CASES, ids=_ids())
def test_user_error_is_one_line_exit_2_nothing_written(tmp_path, module, argv, first_line):
  (tmp_path / "notes.txt").write_text("not an archive\n")
  np.savez(tmp_path / "other.npz", weights=np.zeros(3, np.float32))
  (tmp_path / "empty").mkdir()
  args = [a.format(t=tmp_path) for a in argv.split()]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)
  err_lines = proc.stderr.splitlines()
  assert err_lines and err_lines[0] == first_line.format(t=tmp_path), proc.stderr[-3000:]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


# Found by a trainer's validate_config, after the devices started and the workdir was locked (the
# log lines come first): still one error line, exit 2, and the workdir the lock created is gone.
TRAINER_CASES = [
    ("--config configs/quickstart.py:tiny --config.optim.grad_accum_steps=0",
     "error: optim.grad_accum_steps=0 must be >= 1"),
    ("--config configs/quickstart.py:tiny --config.input.device_prefetch=-1",
     "error: input.device_prefetch=-1 must be an int >= 0 (0: no prefetch)"),
    # found before training, not at the first evaluation (5000 steps in with the paper configs)
    ("--config configs/quickstart.py:tiny --config.eval.batch_size=7 --config.eval.num_examples=3",
     "error: eval.num_examples=3 is fewer than one batch of eval.batch_size=7: the evaluation "
     "would have no batch"),
]


@pytest.mark.parametrize("argv,last_line", TRAINER_CASES)
def test_trainer_config_error_leaves_no_workdir(tmp_path, argv, last_line):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-m", "maskvq_jax.main", *argv.split(), "--workdir",
                         str(tmp_path / "out" / "run")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.stderr.strip().splitlines()[-1] == last_line, proc.stderr[-3000:]
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert not (tmp_path / "out").exists()  # both levels it created


# ----- the mechanism itself ----------------------------------------------------------------------
def test_internal_bugs_keep_their_traceback(capsys):
  @cli.entry_point
  def main(argv=None):
    del argv
    raise ValueError("a bug, not the user's mistake")

  with pytest.raises(ValueError, match="a bug"):
    main([])

  @cli.entry_point
  def main2(argv=None):
    with cli.user_input():
      raise FileNotFoundError("no such workdir: /x")

  assert main2([]) == 2
  assert capsys.readouterr().err == "error: no such workdir: /x\n"


def test_argparse_errors_and_multiline_messages_are_one_line(capsys):
  @cli.entry_point
  def main(argv=None):
    p = cli.ArgumentParser(prog="demo")
    p.add_argument("--num", type=int, required=True)
    p.parse_args(argv)
    raise cli.UserError("checkpoint does not match the model:\n  missing: a/b\n  unknown: c")

  assert main(["--num", "x"]) == 2
  assert capsys.readouterr().err == "error: argument --num: invalid int value: 'x'\n"
  assert main(["--num", "1"]) == 2
  assert capsys.readouterr().err == ("error: checkpoint does not match the model:; missing: a/b; "
                                     "unknown: c\n")


def test_config_argument_checks_cover_every_config():
  """Every argument of every config has a type-and-range entry, and the choices match the code."""
  import glob  # pylint: disable=import-outside-toplevel
  import importlib  # pylint: disable=import-outside-toplevel
  from configs import common  # pylint: disable=import-outside-toplevel
  from maskvq_jax.core import sharding  # pylint: disable=import-outside-toplevel
  from maskvq_jax.models import masker  # pylint: disable=import-outside-toplevel
  assert set(common.SCORERS) == set(masker.SCORERS)
  assert set(common.SHARDING_RULES) == set(sharding.RULES)
  seen = {}
  real = common.parse_arg

  def spy(arg, lazy=False, **spec):
    seen.update(spec)
    return real(arg, lazy=lazy, **spec)

  common.parse_arg = spy
  try:
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
      name = os.path.basename(path)[:-3]
      if name not in ("__init__", "common", "stackformer_common"):
        importlib.import_module(f"configs.{name}").get_config()
  finally:
    common.parse_arg = real
  unchecked = {k for k, v in seen.items() if k not in common.ARG_CHECKS
               and not isinstance(v, (bool, str))}
  assert unchecked == set(), f"numeric config arguments without a range: {unchecked}"
  free_strings = {k for k, v in seen.items() if isinstance(v, str) and k not in common.ARG_CHECKS}
  assert free_strings == {"folder", "tokenizer", "data_dir"}  # paths: any string


@pytest.mark.parametrize("arg,message", [
    ("keep=0", "keep: expected a float in (0, 1], got '0'"),
    ("keep=nan", "keep: expected a float in (0, 1], got 'nan'"),
    ("scorer=cnn", "scorer: expected one of conv, mlp, random, got 'cnn'"),
    ("perceptual=-1", "perceptual: expected a float >= 0.0, got '-1'"),
    ("tiny=2", "tiny: expected true or false, got '2'"),
])
def test_parse_arg_names_the_argument(arg, message):
  from configs import quickstart  # pylint: disable=import-outside-toplevel
  with pytest.raises(cli.UserError) as e:
    quickstart.get_config(arg)
  assert str(e.value) == message
  c = quickstart.get_config("keep=1,scorer=mlp,perceptual=0,tiny=yes")
  assert (c.model.keep_ratio, c.model.scorer, c.loss.perceptual_weight) == (1.0, "mlp", 0.0)
