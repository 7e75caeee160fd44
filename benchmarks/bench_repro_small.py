r"""Step times of every run of the small reproduction, and the whole pipeline's wall-time estimate.

  python benchmarks/bench_repro_small.py [--steps 5] [--data_dir D] [--out times.json]

Why: `launch/repro_small.sh` must fit in about two hours of a 2-core CPU; its budget
(configs/repro_small.py) is chosen from these numbers. Each stage-1 variant and both stage-2
models run at the FULL config in fresh workdirs: once to fill a persistent XLA compilation cache,
then for 1 and for 1 + N steps (compilations read from that cache); the difference of the last
two over N is the time per step with set-up and checkpoint writes cancelled out. Both
wall-clock and process CPU seconds are measured: on a busy machine the wall clock is inflated
by the other processes, CPU seconds much less. The quickstart's stage-1 config is measured the
same way as a calibration point, since its idle 2-core wall time is known (the quickstart's
batch-16 stage 1 as shipped until 2026-12-02: 600 steps in 239 s, 0.40 s/step including its share
of start-up and evaluation; this script keeps that config); `idle_estimate_s` =
CPU s/step x (0.40 / quickstart CPU s/step) x steps. Sampling (images/s) of both stage-2 models
is measured after one compiling batch, and the FID InceptionV3's time per image for the
evaluation estimate. Prints one JSON line.
"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QUICKSTART_IDLE_S_PER_STEP = 239.0 / 600  # README: stage 1 of the quickstart on 2 idle cores


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def _run(config, workdir, steps):
  from maskvq_jax import trainers  # pylint: disable=import-outside-toplevel
  config.run_steps = steps
  w, c = time.perf_counter(), _cpu()
  trainers.get(config.trainer).train(config, workdir)
  return time.perf_counter() - w, _cpu() - c


def per_step(make, root, name, n):
  """(wall s/step, cpu s/step, workdir of the longer run) of config `make()`."""
  w0, _ = _run(make(), os.path.join(root, name + "_warm"), 1)  # fills the compilation cache
  w1, c1 = _run(make(), os.path.join(root, name + "_a"), 1)
  w2, c2 = _run(make(), os.path.join(root, name + "_b"), 1 + n)
  return {"wall_s_per_step": (w2 - w1) / n, "cpu_s_per_step": (c2 - c1) / n,
          "first_run_wall_s": w0}, os.path.join(root, name + "_b")


def sampling_rate(workdir, num=16):
  """Images/s of a stage-2 workdir (second batch of `num`, after a compiling one)."""
  from maskvq_jax.data import runs  # pylint: disable=import-outside-toplevel
  from maskvq_jax.evaluation import generate  # pylint: disable=import-outside-toplevel
  from maskvq_jax.stage2 import sampling  # pylint: disable=import-outside-toplevel
  model, variables, _ = runs.load_stage2(workdir)
  tok, tok_vars, _ = runs.load_tokenizer(workdir)
  cfg = sampling.SamplerConfig(steps=int(tok.num_tokens), top_k=32, top_p=0.95)
  c = _cpu()
  _, timing = generate.sample_images(model, variables, tok, tok_vars, cfg, num_images=2 * num,
                                     batch_size=num)
  return {"images_per_s": timing["images_per_s"], "tokens_per_image": int(tok.num_tokens),
          "cpu_s_two_batches": _cpu() - c}


def inception_rate(batch=32):
  """CPU and wall seconds per image of the FID InceptionV3 on 32 px images (after compiling):
  the evaluation's main cost (reals + reconstructions per tokenizer, samples per stage-2 run)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from maskvq_jax.evaluation import features  # pylint: disable=import-outside-toplevel
  from maskvq_jax.tools import fetch_weights  # pylint: disable=import-outside-toplevel
  params = fetch_weights.inception_params()
  fn = jax.jit(features.inception_pool3)
  x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
  jax.block_until_ready(fn(params, x))
  w, c = time.perf_counter(), _cpu()
  jax.block_until_ready(fn(params, x))
  return {"wall_s_per_image": (time.perf_counter() - w) / batch,
          "cpu_s_per_image": (_cpu() - c) / batch}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--data_dir", default="")
  ap.add_argument("--out", default="")
  ap.add_argument("--only", default="", help="comma list of run names (default: all)")
  args = ap.parse_args()
  from configs import quickstart  # pylint: disable=import-outside-toplevel
  from configs import repro_small  # pylint: disable=import-outside-toplevel
  from maskvq_jax.tools import repro_small as pipeline  # pylint: disable=import-outside-toplevel

  root = tempfile.mkdtemp(prefix="bench_repro_small_")
  import jax  # pylint: disable=import-outside-toplevel
  if not jax.config.jax_compilation_cache_dir:  # the second run of each config compiles nothing
    jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(),
                                                                "bench_repro_small_xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  only = set(filter(None, args.only.split(",")))
  dd = f",data_dir={args.data_dir}" if args.data_dir else ""
  out = {"steps": args.steps, "stage1": {}, "stage2": {}, "sampling": {}}

  def save():  # after every measurement: a killed run keeps what it measured
    if args.out:
      with open(args.out, "w") as f:
        f.write(json.dumps(out) + "\n")

  def qs():
    c = quickstart.get_config("perceptual=0,keep=0.25,steps=600")
    c.optim.lr, c.loss.disc_factor = 5e-4, 0.0
    c.eval.every_steps = c.eval.image_every_steps = 600
    return c
  out["quickstart"], _ = per_step(qs, root, "quickstart", args.steps)
  save()
  dirs = {}
  for name, arg in pipeline.STAGE1:
    if only and name not in only and name not in {s[1] for s in pipeline.STAGE2 if s[0] in only}:
      continue
    out["stage1"][name], dirs[name] = per_step(
        lambda a=arg: repro_small.get_config(a + dd), root, name, args.steps)
    save()
  for name, tok, arg in pipeline.STAGE2:
    if (only and name not in only) or tok not in dirs:
      continue
    def make(a=arg, t=tok):
      c = repro_small.get_config(a + dd)
      c.tokenizer = dirs[t]
      return c
    out["stage2"][name], wd = per_step(make, root, name, args.steps)
    out["sampling"][name] = sampling_rate(wd)
    save()
  out["inception"] = inception_rate()
  scale = QUICKSTART_IDLE_S_PER_STEP / out["quickstart"]["cpu_s_per_step"]
  est = {}
  for stage, steps in (("stage1", repro_small.STAGE1_STEPS), ("stage2", repro_small.STAGE2_STEPS)):
    for name, m in out[stage].items():
      m["idle_s_per_step_estimate"] = m["cpu_s_per_step"] * scale
      est[name] = m["idle_s_per_step_estimate"] * steps
  out["calibration_idle_per_cpu_s"] = scale
  out["training_idle_estimate_s"] = est
  out["training_idle_estimate_total_s"] = sum(est.values())
  # evaluation: Inception on reals + reconstructions of the held-out split per tokenizer, and on
  # as many samples as held-out images per stage-2 model (sampling itself measured above)
  n_val, n1, n2 = 387, len(pipeline.STAGE1), len(pipeline.STAGE2)
  inc = out["inception"]["cpu_s_per_image"] * scale * n_val * (2 * n1 + n2)
  smp = sum(n_val / max(m["images_per_s"], 1e-9) for m in out["sampling"].values())
  out["evaluation_idle_estimate_s"] = {"inception": inc, "sampling_wall_as_measured": smp}
  save()
  print(json.dumps(out))


if __name__ == "__main__":
  main()
