r"""Sampling CLI: a trained Stackformer + its frozen tokenizer -> PNG grids and uint8 .npz shards.

  python -m maskvq_jax.sample --workdir runs/quickstart/stage2 --num 64 --out samples/
  python -m maskvq_jax.sample --workdir W --num 50000 --out S --batch_size 256 --top_k 100 \
      --top_p 0.95 --position_top_k 10 --position_top_p 0.95     # authors' log_images settings
  python -m maskvq_jax.sample --workdir W --num 16 --out S --classes 1,7,7,40 --guidance 2.0
  python -m maskvq_jax.sample --workdir W --num 16 --out S --classes null  # class model, uncond.
  python -m maskvq_jax.sample --workdir W --num 8 --out S --prompts "a red circle|a blue star"

Why a CLI: the authors ship no sampling script. Every host runs the same command (`--multihost`,
or the explicit `--coordinator_address --num_processes --process_id` of `core/distributed.py`);
each batch is one global, batch-sharded `sampling.sample` + tokenizer decode over all devices, and
each host writes only the rows its devices hold (no gather), as `samples_h<host>_<shard>.npz` with
"images" uint8 [n, H, W, 3], "codes" / "positions" [n, K], "labels" and the global "index" of
each image. Process 0 also writes PNG grids of the first batches and `sample_info.json` (settings,
tokens/s). `--num` and `--batch_size` need not divide the devices or hosts: the batch is padded
up to them and exactly `--num` images are written. Conditions cycle: `--classes` / `--prompts` lists repeat over the N images (default for
class models: image i gets class i mod n_classes). Bad options raise before anything compiles,
and an existing output is never overwritten.
"""
import argparse
import functools
import json
import sys
import time
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import orbax.checkpoint as ocp

from maskvq_jax.stage2 import sampling
from maskvq_jax.core import cli
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data import runs as checkpoints
from maskvq_jax.evaluation import features
from maskvq_jax.core import distributed
from maskvq_jax.core import files
from maskvq_jax.evaluation import recon
from maskvq_jax.core.progress import Progress
from maskvq_jax.models import text_encoder as text_lib


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="python -m maskvq_jax.sample",
                         description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="stage-2 (Stackformer) workdir")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--num", type=int, required=True, help="number of images")
  p.add_argument("--out", required=True, help="output directory (must not hold samples yet)")
  p.add_argument("--classes", default=None,
                 help="comma list of class ids (cycled), or 'null' for the unconditional null "
                      "class of a guidance-trained class model")
  p.add_argument("--prompts", default=None, help="'|'-separated captions (text models; cycled)")
  p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=None)
  p.add_argument("--top_p", type=float, default=None)
  p.add_argument("--position_temperature", type=float, default=None,
                 help="temperature of the position logits (default: --temperature, as the "
                      "authors' code, which divides both by one temperature)")
  p.add_argument("--position_top_k", type=int, default=None)
  p.add_argument("--position_top_p", type=float, default=None)
  p.add_argument("--greedy", action="store_true", help="argmax codes and positions")
  p.add_argument("--seed", type=int, default=0, help="batch b uses fold_in(key(seed), b)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="global batch (default: 8 per device, at most --num); padded up to a "
                      "multiple of the device count, the padding dropped")
  p.add_argument("--shard_size", type=int, default=10_000, help="images per .npz shard per host")
  p.add_argument("--grids", type=int, default=4, help="PNG grids to write (first batches)")
  distributed.add_flags(p)
  return p.parse_args(argv)


# ----- loading -----------------------------------------------------------------------------------
def _text_encoder(loc, config: dict):
  """(ByteTextEncoder, params) of a text model's checkpoint (partial restore of text_params)."""
  te = config["text_encoder"]
  enc = text_lib.ByteTextEncoder(max_len=config["input"]["text_len"], d_model=te["d_model"],
                                 n_heads=te["n_heads"], n_layers=te["n_layers"])
  ids = jnp.zeros((1, config["input"]["text_len"]), jnp.int32)
  abstract = nn.meta.unbox(jax.eval_shape(lambda: enc.init(jax.random.key(0), ids, ids > 0)))
  dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  item = {"text_params": jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev), abstract["params"])}
  with ocp.CheckpointManager(loc.path, options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    out = m.restore(loc.step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
  return enc, checkpoints.host_arrays(out.state["text_params"])


def load(workdir: str, step: Optional[int] = None) -> dict:
  """Everything sampling needs from a stage-2 workdir (raises on any other kind of directory)."""
  model, variables, info = checkpoints.load_stage2(workdir, step)
  loc = checkpoints.describe(workdir, step)
  tok, tok_vars, tok_info = checkpoints.load_tokenizer(info["tokenizer"])
  out = dict(model=model, variables=variables, info=info, tokenizer=tok, tokenizer_variables=tok_vars,
             tokenizer_info=tok_info, text=None, text_params=None, text_len=0)
  if model.text_dim:
    out["text"], out["text_params"] = _text_encoder(loc, loc.meta["config"])
    out["text_len"] = int(loc.meta["config"]["input"]["text_len"])
  return out


# ----- options -----------------------------------------------------------------------------------
def sampler_config(args, steps: int) -> sampling.SamplerConfig:
  return sampling.SamplerConfig(
      steps=steps, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
      position_temperature=args.position_temperature, position_top_k=args.position_top_k,
      position_top_p=args.position_top_p, greedy=args.greedy, guidance_scale=args.guidance)


def conditions(args, model, num: int) -> dict:
  """Per-image conditions for all `num` images: {"labels"} / {"prompts"} / {} (ValueError)."""
  if model.n_classes:
    if args.prompts:
      raise ValueError("--prompts given but the model is class-conditional (use --classes)")
    if args.classes is None:
      return {"labels": np.arange(num, dtype=np.int32) % model.n_classes}
    if args.classes.strip().lower() == "null":
      if not model.null_class:
        raise ValueError("--classes null needs a model trained with a null class "
                         "(model.null_class=True)")
      if args.guidance is not None:
        raise ValueError("--guidance with --classes null: guidance needs real classes")
      return {"labels": np.full((num,), model.null_class_token, np.int32)}
    try:
      ids = [int(v) for v in args.classes.split(",") if v.strip()]
    except ValueError as e:
      raise ValueError(f"--classes={args.classes!r}: expected comma-separated ints or 'null'") from e
    bad = [i for i in ids if not 0 <= i < model.n_classes]
    if not ids or bad:
      raise ValueError(f"--classes={args.classes!r}: ids must be in [0, {model.n_classes})")
    return {"labels": np.resize(np.asarray(ids, np.int32), num)}
  if args.classes is not None:
    raise ValueError(f"--classes={args.classes!r} given but the model has no classes")
  if model.text_dim:
    prompts = [q for q in (args.prompts or "").split("|") if q.strip()]
    if not prompts:
      raise ValueError("text-conditional model: give --prompts 'caption one|caption two'")
    return {"prompts": [prompts[i % len(prompts)] for i in range(num)]}
  if args.prompts:
    raise ValueError("--prompts given but the model is not text-conditional")
  return {}


def batch_size(args, n_dev: int) -> int:
  """Global batch per sampling call: --batch_size, else 8 per device but no more than --num
  needs; either way padded up to a multiple of the devices (and hosts), with a logged note when
  the padding is the user's --batch_size. The padding rows are sampled and dropped."""
  if args.batch_size is not None:
    if args.batch_size < 1:
      raise ValueError(f"--batch_size={args.batch_size} must be >= 1")
    return sharding_lib.padded_size("--batch_size", args.batch_size, n_dev, note=True)
  return min(8 * n_dev, sharding_lib.padded_size("--num", args.num, n_dev))


def validate(args, loaded) -> tuple[sampling.SamplerConfig, dict, int]:
  """All option checks, before any compilation. Returns (sampler config, conditions, batch)."""
  model, tok = loaded["model"], loaded["tokenizer"]
  if args.num < 1:
    raise ValueError(f"--num={args.num} must be >= 1")
  if args.shard_size < 1:
    raise ValueError(f"--shard_size={args.shard_size} must be >= 1")
  bs = batch_size(args, jax.device_count())
  if model.codebook_size != tok.codebook_size or model.num_positions != tok.grid ** 2:
    raise ValueError(f"the Stackformer (codebook {model.codebook_size}, {model.num_positions} "
                     f"positions) does not fit its tokenizer (codebook {tok.codebook_size}, "
                     f"{tok.grid ** 2} positions)")
  cfg = sampler_config(args, int(tok.num_tokens))
  conds = conditions(args, model, args.num)
  text = np.zeros((bs, 1, model.text_dim), np.float32) if model.text_dim else None
  sampling.validate_stackformer_sampling(
      model, cfg, labels=np.zeros((bs,), np.int32) if model.n_classes else None, text=text,
      text_mask=None if text is None else np.ones((bs, 1), bool), batch_size=bs)
  out = files.absolute(args.out)
  if files.isdir(out) and any(f.startswith("samples_") or f == "sample_info.json"
                              for f in files.listdir(out)):
    raise FileExistsError(f"--out={out} already holds samples; choose a new directory")
  return cfg, conds, bs


# ----- writing -----------------------------------------------------------------------------------
def _local_rows(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """(global row indices, rows) held by this process's devices, without gathering."""
  seen, idx, rows = set(), [], []
  for s in x.addressable_shards:
    start = s.index[0].start or 0
    if start in seen:
      continue
    seen.add(start)
    data = np.asarray(s.data)
    idx.append(np.arange(start, start + data.shape[0]))
    rows.append(data)
  order = np.argsort([i[0] for i in idx])
  return np.concatenate([idx[i] for i in order]), np.concatenate([rows[i] for i in order])


def _first_rows(x: jax.Array, k: int, replicated: NamedSharding) -> np.ndarray:
  """Rows [0, k) of a batch-sharded array on every process (a collective on several hosts: the
  rows of a grid lie on other hosts' devices too)."""
  return np.asarray(_head_fn(k, replicated)(x).addressable_data(0))


@functools.lru_cache(maxsize=None)
def _head_fn(k: int, replicated: NamedSharding):
  return jax.jit(lambda a: a[:k], out_shardings=replicated)


def _grid(images: np.ndarray) -> np.ndarray:
  n, h, w, c = images.shape
  cols = int(np.ceil(np.sqrt(n)))
  rows = -(-n // cols)
  pad = np.zeros((rows * cols - n, h, w, c), np.uint8)
  g = np.concatenate([images, pad]).reshape(rows, cols, h, w, c)
  return g.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


class _ShardWriter:
  def __init__(self, out: str, shard_size: int):
    self.out, self.shard_size, self.buf, self.count, self.paths = out, shard_size, [], 0, []

  def add(self, **rows):
    self.buf.append(rows)
    if sum(len(b["index"]) for b in self.buf) >= self.shard_size:
      self.flush()

  def flush(self):
    if not self.buf:
      return
    cat = {k: np.concatenate([b[k] for b in self.buf]) for k in self.buf[0]}
    path = files.join(self.out, f"samples_h{jax.process_index():05d}_{self.count:05d}.npz")
    files.save_npz(path, **cat)  # atomic: a reader never sees half a shard
    self.paths.append(path)
    self.buf, self.count = [], self.count + 1


def run(args) -> dict:
  with cli.user_input():  # the workdir and the options: the user's to fix
    loaded = load(args.workdir, args.step)
    cfg, conds, bs = validate(args, loaded)
  model, tok = loaded["model"], loaded["tokenizer"]
  out = files.makedirs(args.out)  # absolute if local; a URL (gs://...) stays a URL

  mesh = features.data_mesh()
  rules = sharding_lib.data_axis_rules()
  batch_sh, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
  sf_vars = jax.device_put(loaded["variables"], repl)
  tok_vars = jax.device_put(loaded["tokenizer_variables"], repl)

  def decode(v, codes, positions):
    return recon.quantize_u8(
        tok.apply(v, codes, positions, method="decode_codes").astype(jnp.float32))
  decode_fn = jax.jit(decode, in_shardings=(repl, batch_sh, batch_sh), out_shardings=batch_sh)
  text_fn = None
  if loaded["text"] is not None:
    enc, tp = loaded["text"], jax.device_put(loaded["text_params"], repl)
    text_fn = jax.jit(lambda ids: enc.apply({"params": tp}, ids, ids != text_lib.PAD_ID),
                      in_shardings=(batch_sh,))

  n_batches = -(-args.num // bs)
  key = jax.random.key(args.seed)
  writer = _ShardWriter(out, args.shard_size)
  progress = Progress("sample", args.num, every_s=5.0)
  times = []
  for b in range(n_batches):
    lo = b * bs
    sel = np.arange(lo, lo + bs) % args.num  # the last batch wraps; its surplus is dropped
    kw = {}
    if "labels" in conds:
      kw["labels"] = jax.device_put(conds["labels"][sel], batch_sh)
    elif "prompts" in conds:
      ids, _ = text_lib.tokenize_bytes([conds["prompts"][i] for i in sel], loaded["text_len"])
      kw["text"], kw["text_mask"] = text_fn(jax.device_put(ids, batch_sh))
    else:
      kw["batch_size"] = bs
    t0 = time.perf_counter()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      s = sampling.sample(model, sf_vars, jax.random.fold_in(key, b), cfg, **kw)
      codes, positions = (jax.device_put(a, batch_sh) for a in (s.codes, s.positions))
      images = decode_fn(tok_vars, codes, positions)
      jax.block_until_ready(images)
    times.append(time.perf_counter() - t0)
    rows, imgs = _local_rows(images)
    keep = rows < args.num - lo
    labels = conds["labels"][sel] if "labels" in conds else np.full((bs,), -1, np.int32)
    local = {"index": lo + rows[keep], "images": imgs[keep],
             "codes": _local_rows(codes)[1][keep].astype(np.int32),
             "positions": _local_rows(positions)[1][keep].astype(np.int32),
             "labels": labels[rows[keep]]}
    writer.add(**local)
    if b < args.grids:  # every process takes part in gathering the grid's rows; process 0 writes
      g = _first_rows(images, min(bs, args.num - lo, 64), repl)
      if jax.process_index() == 0:
        files.save_png(files.join(out, f"grid_{b:03d}.png"), _grid(g))
    progress(min(lo + bs, args.num))
  writer.flush()
  timed = times[1:] if len(times) > 1 else times
  info = {"workdir": files.absolute(args.workdir), "step": loaded["info"]["step"],
          "tokenizer": loaded["info"]["tokenizer"], "num": args.num, "batch_size": bs,
          "seed": args.seed, "sampler": {k: v for k, v in vars(cfg).items()},
          "conditions": ("classes" if "labels" in conds else "prompts" if "prompts" in conds
                         else "unconditional"),
          "classes": args.classes, "prompts": args.prompts,
          "tokens_per_image": int(tok.num_tokens),
          "tokens_per_s": bs * len(timed) * int(tok.num_tokens) / max(sum(timed), 1e-9),
          "images_per_s": bs * len(timed) / max(sum(timed), 1e-9),
          "throughput_includes_compile": len(times) == 1, "seconds": float(sum(times)),
          "num_processes": jax.process_count(), "num_devices": jax.device_count()}
  if jax.process_index() == 0:
    files.write_text(files.join(out, "sample_info.json"), json.dumps(info, indent=2))
  info["shards"] = writer.paths
  return info


@cli.entry_point
def main(argv=None) -> int:
  args = parse_args(argv)
  with cli.user_input(ValueError):
    distributed.initialize_from_args(args)
  info = run(args)
  if jax.process_index() == 0:
    print(f"wrote {args.num} samples to {args.out} ({info['tokens_per_s']:.0f} tokens/s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
