r"""The two-stage quickstart: stage 1 (MQ-VAE) -> stage 2 (Stackformer) -> pictures + metrics.json.

  bash launch/quickstart.sh [WORKDIR]                      # what the README tells you to run
  python -m maskvq_jax.tools.quickstart --workdir runs/quickstart [--tiny]

Why one entry point: a newcomer's first command should show the whole pipeline working, offline,
on a CPU: the tokenizer is trained on procedural shapes (`configs/quickstart.py`, no LPIPS
download), a class-conditional Stackformer with a null class is trained on its tokens
(`configs/quickstart_stage2.py`), and the workdir then holds

  stage1/ stage2/                 the two trainer workdirs (checkpoints, TensorBoard, images/)
  reconstructions.png             rows: input | reconstruction | score heat map | kept regions
  mask/mask_grid.png (+ per-example heat / overlay PNGs)
  samples_unconditional.png       null-class samples (unconditional)
  samples_class.png               one row per class (class names in metrics.json)
  metrics.json                    PSNR, codebook usage, kept-on-object fraction, tokens/s,
                                  class accuracy of the samples and reconstructions, ...
  classifier/                     the shape / colour classifier that measures it (cached npz)

Are the class rows the requested class? A small CNN trained only on real procedural images
(maskvq_jax/evaluation/shape_classifier.py, 30-40 s, cached in the workdir) names the shape and the
colour of `SAMPLES_PER_CLASS` guided samples per class row; metrics.json gives its accuracy on
them (joint class, shape, colour, and per class), on the stage-1 reconstructions (the upper bound
for stage 2) and on held-out real images (its own accuracy: the other numbers mean something only
when this is high).

Re-running resumes finished trainers (no step is redone) and rewrites only the report files.
A run killed outright (SIGKILL, power loss) leaves its workdir lock behind; the rerun then stops
with one line naming the dead holder, and `--takeover_lock` takes that stale lock over.
`--tiny` (or QUICKSTART_TINY=1 in the shell script) is the CI size: 16 px, a few steps, ~1-2 min.
Each stage is announced on stderr with the time elapsed since the start (`[quickstart 0:04:12]`);
the trainers print a step line with losses, steps/s and ETA at every log interval (stdout).
"""
import dataclasses
import json
import sys
import time

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from configs import quickstart as stage1_config
from configs import quickstart_stage2 as stage2_config
from maskvq_jax import sample as sample_cli
from maskvq_jax import trainers
from maskvq_jax.data.builders.shapes import generate as shapes_gen
from maskvq_jax.data import runs as checkpoints
from maskvq_jax.evaluation import codebook
from maskvq_jax.core import cli
from maskvq_jax.core import files
from maskvq_jax.core import progress
from maskvq_jax.core import train_loop
from maskvq_jax.core import workdir_lock
from maskvq_jax.evaluation import mask_analysis
from maskvq_jax.evaluation import recon
from maskvq_jax.evaluation import shape_classifier
from maskvq_jax.stage2 import sampling

SIZES = {  # (stage-1 config arg, stage-2 config arg, report images, samples per grid)
    "full": ("perceptual=0,keep=0.25,steps=1000", "steps=500", 256, 16),
    "tiny": ("tiny,perceptual=0,steps=4", "tiny,steps=4", 32, 8),
}
# Stage-1 changes for a CPU budget of minutes (measured on 2 idle cores: the default lr 2e-4 with
# the GAN on from step 0 still gives blurry blobs after 400 steps; lr 5e-4 without the GAN gives
# recognisable shapes, and `disc_factor = 0` skips the discriminator statically). The
# discriminator needs far longer than this run to help. Keeping 25 % of the 16x16 grid (the
# paper's stage-2 ratio) puts the kept tokens on the objects and halves the stage-2 sequence.
# Batch 8 instead of 16: more updates for the images seen. Held-out PSNR, keep 0.25, 256 images
# (README): batch 16 x 600 steps 18.3 dB, 8 x 1000 18.9, 8 x 1200 19.5 (the same images as
# 16 x 600), 4 x 2400 19.0; 8 x 1800 reaches 20.7 but takes 1.5x as long as 8 x 1200.
# The trainer's own evaluation and image grid only at the end (every_steps 0), without LPIPS (no
# VGG16 to load and compile): the report below measures the tokenizer itself. Checkpoints every
# 250 steps instead of 100 (a SIGTERM still saves its step). Measured 2026-12-02: the evaluation at
# step 500 cost ~9 s, each checkpoint ~1 s of steps.
STAGE1_OVERRIDES = {"full": {"optim.lr": 5e-4, "loss.disc_factor": 0.0, "input.batch_size": 8,
                             "eval.every_steps": 0, "eval.image_every_steps": 0,
                             "eval.lpips": False, "ckpt_every_steps": 250}, "tiny": {}}
# Stage 2 without its periodic evaluation and sample grids (every_steps 0: off, and no sampler to
# compile): the report below samples and classifies the trained model itself.
STAGE2_OVERRIDES = {"full": {"eval.every_steps": 0, "sample.every_steps": 0}, "tiny": {}}
# Classifier-free guidance for the class rows (the model has a learned null class): at this
# training budget the unguided class samples often miss the class colour.
CLASS_GUIDANCE = 3.0
# Guided samples drawn per class row and classified (samples_class.png shows the first
# `per grid / 2` of each).
SAMPLES_PER_CLASS = {"full": 32, "tiny": 4}
# The sample classifier's training budget (shape_classifier.TrainConfig; res = stage-1 res).
CLASSIFIER = {"full": {}, "tiny": {"steps": 40, "num_train": 256}}
# One row per class in samples_class.png: four shapes in four colours. Not "diamond": the
# generator rotates every shape at random, so its diamonds are its squares (shape_classifier).
SAMPLE_CLASSES = (("circle", "red"), ("square", "blue"), ("triangle", "yellow"),
                  ("star", "cyan"))


def parse_args(argv=None):
  p = cli.ArgumentParser(prog="python -m maskvq_jax.tools.quickstart",
                         description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="runs/quickstart")
  p.add_argument("--tiny", action="store_true", help="CI size (16 px, a few steps)")
  p.add_argument("--stage1", default=None, help="override the stage-1 config arg")
  p.add_argument("--stage2", default=None, help="override the stage-2 config arg")
  p.add_argument("--takeover_lock", action="store_true",
                 help="take over the STALE workdir lock a killed earlier run left behind")
  return p.parse_args(argv)


_START = [time.time()]  # main() resets it: _log shows the time elapsed since then


def _log(msg):
  print(f"[quickstart {progress.hms(time.time() - _START[0])}] {msg}", file=sys.stderr, flush=True)


def _grid(rows: list[np.ndarray]) -> np.ndarray:
  """rows of uint8 [n, H, W, 3] -> one image, one row per entry."""
  return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def _upscale(a: np.ndarray, min_side: int = 64) -> np.ndarray:
  f = max(1, -(-min_side // a.shape[1]))
  return np.repeat(np.repeat(a, f, axis=-3), f, axis=-2) if f > 1 else a


def _accuracy_keys(acc: dict, prefix: str) -> dict:
  return {f"{prefix}class_accuracy": acc["class"], f"{prefix}shape_accuracy": acc["shape"],
          f"{prefix}colour_accuracy": acc["colour"]}


def tokenizer_report(stage1_dir: str, out: str, num: int, res: int, clf) -> dict:
  """Reconstructions, mask figures and stage-1 metrics on `num` validation shapes; `clf` (a
  shape_classifier.Classifier) classifies the reconstructions and the images themselves."""
  model, variables, info = checkpoints.load_tokenizer(stage1_dir)
  exs = [shapes_gen.make_example(0, i, res, "validation") for i in range(num)]
  images = np.stack([e["image"] for e in exs])
  masks = np.stack([e["mask"] for e in exs])
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, rngs={"mask": jax.random.key(0)}))
  x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
  rec, aux = apply(variables, x)
  rec = jnp.clip(rec.astype(jnp.float32), -1.0, 1.0)
  psnr = float(jnp.mean(dm_pix.psnr((x + 1) / 2, (rec + 1) / 2)))
  labels = np.asarray([e["label"] for e in exs])
  rec_u8 = np.asarray(recon.quantize_u8(rec))
  classified = {**_accuracy_keys(shape_classifier.accuracy(clf, rec_u8, labels), "recon_"),
                **_accuracy_keys(shape_classifier.accuracy(clf, images, labels), "real_")}
  usage = codebook.CodebookUsage(model.codebook_size)
  usage.update(np.asarray(aux["codes"]))
  cover = mask_analysis.summarize(jax.device_get(mask_analysis.object_coverage(
      aux["mask"], mask_analysis.pool_to_grid(masks, model.grid))))
  from maskvq_jax.core import writers  # pylint: disable=g-import-not-at-top  # CLU -> TF
  grid = writers.recon_grid(np.asarray(x[:8]), np.asarray(rec[:8]), np.asarray(aux["scores"][:8]),
                            np.asarray(aux["mask"][:8]))
  files.save_png(files.join(out, "reconstructions.png"), _upscale(grid[None], 256)[0])
  mask_analysis.save_figures(images, np.asarray(aux["scores"]), np.asarray(aux["mask"]),
                             files.join(out, "mask"), max_examples=8)
  return {"psnr": psnr, "codebook_used_fraction": usage.result()["used_fraction"],
          "codebook_perplexity": usage.result()["perplexity"],
          "kept_on_object_tokens": cover["kept_on_object_tokens"],
          "object_tokens_chance": cover["chance_tokens"], "object_lift_tokens": cover["lift_tokens"],
          "kept_on_object_area": cover["kept_on_object"], "keep_ratio": float(model.keep_ratio),
          "tokens_per_image": int(model.num_tokens), "grid_tokens": int(model.grid) ** 2,
          "codebook_size": int(model.codebook_size), "num_images": num, **classified,
          "checkpoint_step": info.get("step")}


def sample_report(stage2_dir: str, out: str, per_grid: int, per_class: int, clf) -> dict:
  """Unconditional (null class) and class-conditional sample grids; sampling tokens/s; the class
  accuracy of `per_class` guided samples per class row under `clf` (shape_classifier)."""
  loaded = sample_cli.load(stage2_dir)
  model, tok = loaded["model"], loaded["tokenizer"]
  # the authors' log_images filters, scaled to the small codebook (top-k = 1/8 of the codes);
  # one KV-cache loop instead of 4 length buckets: the same samples, 2 loops to compile instead
  # of 8 (report 22 -> 15 s, 2026-12-02); the buckets pay off only over many sampling batches
  cfg = sampling.SamplerConfig(steps=int(tok.num_tokens), top_k=max(1, tok.codebook_size // 8),
                               top_p=0.95, position_top_k=10, position_top_p=0.95,
                               cache_buckets=1)
  params, tok_vars = loaded["variables"], loaded["tokenizer_variables"]
  decode = jax.jit(lambda v, c, p: recon.quantize_u8(
      tok.apply(v, c, p, method="decode_codes").astype(jnp.float32)))

  def draw(labels, seed):
    s = sampling.sample(model, params, jax.random.key(seed), cfg, labels=jnp.asarray(labels))
    jax.block_until_ready(s.codes)
    return s

  n_rows = len(SAMPLE_CLASSES)
  colours = list(shapes_gen.COLORS)
  classes = [shapes_gen.SHAPES.index(shape) * len(colours) + colours.index(colour)
             for shape, colour in SAMPLE_CLASSES]
  cls_labels = np.repeat(np.asarray(classes, np.int32), per_class)
  null = np.full((per_grid,), model.null_class_token, np.int32)
  draw(null, 0)  # compile
  t0 = time.perf_counter()
  s_uncond = draw(null, 1)
  secs = time.perf_counter() - t0
  cfg = dataclasses.replace(cfg, guidance_scale=CLASS_GUIDANCE)
  s_class = draw(cls_labels, 2)
  imgs_u = np.asarray(decode(tok_vars, s_uncond.codes, s_uncond.positions))
  imgs_c = np.asarray(decode(tok_vars, s_class.codes, s_class.positions))
  half = per_grid // 2
  rows = [imgs_c[i * per_class:i * per_class + half] for i in range(n_rows)]
  files.save_png(files.join(out, "samples_unconditional.png"),
                 _upscale(_grid([imgs_u[:half], imgs_u[half:]])[None])[0])
  files.save_png(files.join(out, "samples_class.png"),
                 _upscale(_grid(rows)[None])[0])
  distinct = all(len(np.unique(p)) == p.size for p in np.asarray(s_class.positions))
  names = [f"{colour} {shape}" for shape, colour in SAMPLE_CLASSES]
  per_class_acc = {}
  for i, name in enumerate(names):
    sl = slice(i * per_class, (i + 1) * per_class)
    acc = shape_classifier.accuracy(clf, imgs_c[sl], cls_labels[sl])
    per_class_acc[name] = {k: acc[k] for k in ("class", "shape", "colour")}
  overall = shape_classifier.accuracy(clf, imgs_c, cls_labels)
  return {"sampling_tokens_per_s": per_grid * cfg.steps / secs,
          "class_guidance_scale": CLASS_GUIDANCE,
          "sampling_images_per_s": per_grid / secs, "sample_class_rows": names,
          **_accuracy_keys(overall, ""), "samples_per_class": per_class,
          "per_class_accuracy": per_class_acc,
          "positions_distinct": bool(distinct), "checkpoint_step": loaded["info"]["step"]}


def _train(trainer: str, config, workdir: str, name: str) -> dict:
  """The trainer's run; a workdir lock it cannot take (e.g. the stale lock of a killed earlier
  run) is a one-line user error naming this tool's flag; a preempted trainer stops the quickstart
  (train_loop.RunStopped) instead of starting the next stage on an unfinished model."""
  try:
    return train_loop.require_finished(trainers.get(trainer).train(config, workdir), name)
  except workdir_lock.WorkdirLockError as e:
    raise cli.UserError(workdir_lock.with_takeover_flag(e, "--takeover_lock")) from e


@cli.entry_point
def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    return _run(args)
  except train_loop.RunStopped as e:  # preempted: one line, no report, no next stage
    print(f"stopped: {e}", file=sys.stderr)
    return train_loop.EXIT_STOPPED


def _run(args) -> int:
  _START[0] = t_all = time.time()
  size = "tiny" if args.tiny else "full"
  s1_arg, s2_arg, n_report, per_grid = SIZES[size]
  s1_arg = args.stage1 or s1_arg
  s2_arg = args.stage2 or s2_arg
  # both configs first: a bad --stage1 / --stage2 argument is reported before anything is written
  c1 = stage1_config.get_config(s1_arg)
  if args.stage1 is None:
    c1.update_from_flattened_dict(STAGE1_OVERRIDES[size])
  c2 = stage2_config.get_config(s2_arg)
  if args.stage2 is None:
    c2.update_from_flattened_dict(STAGE2_OVERRIDES[size])
  c1.takeover_lock = c2.takeover_lock = args.takeover_lock
  with cli.user_input():  # e.g. --workdir names a file
    wd = files.makedirs(args.workdir)  # absolute if local; a URL (gs://...) stays a URL

  _log(f"stage 1/3: MQ-VAE on procedural shapes (configs/quickstart.py:{s1_arg}), "
       f"{c1.total_steps} steps -> {wd}/stage1")
  t = time.time()
  s1 = _train("mqvae", c1, files.join(wd, "stage1"), "stage 1")
  s1_secs = time.time() - t
  _log(f"stage 1/3 done in {progress.hms(s1_secs)} (steps {s1['first_step']} -> {s1['last_step']})")

  _log(f"stage 2/3: Stackformer (configs/quickstart_stage2.py:{s2_arg}), {c2.total_steps} steps "
       f"-> {wd}/stage2")
  c2.tokenizer = files.join(wd, "stage1")
  t = time.time()
  s2 = _train("stackformer", c2, files.join(wd, "stage2"), "stage 2")
  s2_secs = time.time() - t
  _log(f"stage 2/3 done in {progress.hms(s2_secs)} (steps {s2['first_step']} -> {s2['last_step']})")

  res = c1.input.res
  _log("stage 3/3: report: sample classifier (cached in classifier/), reconstructions, masks, "
       "samples, metrics.json")
  clf = shape_classifier.load_or_train(files.join(wd, "classifier"), res=res, **CLASSIFIER[size])
  _log(f"classifier {'read from the cache' if clf.cached else f'trained in {clf.train_seconds}s'}:"
       f" held-out real images: class {clf.heldout['class']:.3f}, shape {clf.heldout['shape']:.3f},"
       f" colour {clf.heldout['colour']:.3f}")
  metrics = {"size": size,
             "stage1": tokenizer_report(files.join(wd, "stage1"), wd, n_report, res, clf),
             "stage2": sample_report(files.join(wd, "stage2"), wd, per_grid,
                                     SAMPLES_PER_CLASS[size], clf),
             "classifier": {**_accuracy_keys(clf.heldout, "heldout_"),
                            "num_heldout": clf.heldout["num_images"],
                            "train_steps": clf.config.steps, "num_train": clf.config.num_train,
                            "train_seconds": clf.train_seconds, "cached": clf.cached}}
  # resumed_at_step: the checkpoint step this run started from (0: fresh); steps_run: the
  # steps this run trained (0 when a rerun found both trainers finished).
  metrics["stage1"].update(train_steps=s1["last_step"], resumed_at_step=s1["first_step"],
                           steps_run=s1["last_step"] - s1["first_step"],
                           train_seconds=round(s1_secs, 1),
                           final_train_l1=s1["train"].get("loss/l1"))
  metrics["stage2"].update(train_steps=s2["last_step"], resumed_at_step=s2["first_step"],
                           steps_run=s2["last_step"] - s2["first_step"],
                           train_seconds=round(s2_secs, 1),
                           final_train_loss=s2["train"].get("loss"),
                           final_code_loss=s2["train"].get("loss/code_loss"),
                           final_position_loss=s2["train"].get("loss/position_loss"))
  metrics["wall_seconds"] = round(time.time() - t_all, 1)
  files.write_bytes(files.join(wd, "metrics.json"),
                    (json.dumps(metrics, indent=2) + "\n").encode())
  _log(f"done in {metrics['wall_seconds']:.0f}s; see {wd}/metrics.json and the PNGs next to it")
  print(json.dumps(metrics, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
