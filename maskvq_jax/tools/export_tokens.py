r"""Exports a frozen tokenizer's tokens of a dataset split as an ArrayRecord token dataset.

  python -m maskvq_jax.tools.export_tokens --tokenizer_workdir runs/quickstart/stage1 \
      --split train --out tokens/ [--dataset shapes --source procedural --res 32 --num 8192]
  # then train stage 2 on it: --config.input.tokens_dir=tokens/

Why: stage 2 normally runs the tokenizer inside every step (the authors' way, with augmentation).
For large sweeps over Stackformer settings on one tokenizer, encoding each image once is cheaper.
Exported tokens are those of the un-augmented centre crop (eval preprocessing), in the
tokenizer's score-descending order (stage 2 raster-sorts them), with the label and the caption.

Layout: `<out>/<split>/tokens-<host>-of-<hosts>.array_record` (one record per example: msgpack of
codes [K], positions [K], label, caption; see `stage2_data.encode_record`) and
`<out>/tokens_meta.json` (tokenizer path + geometry, the splits and their files), which the
stage-2 trainer checks against its own tokenizer. All hosts run the same command (`--multihost`,
or the explicit `--coordinator_address --num_processes --process_id` of `core/distributed.py`);
each encodes its consecutive share of the split (all of its examples, split as evenly as the host
count allows) on its local devices and writes its own file, so
nothing is gathered. Existing outputs are never overwritten (a new split can be added).
"""
import json
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from maskvq_jax.core import cli
from maskvq_jax.data import pipeline as input_pipeline
from maskvq_jax.data import tokens as stage2_data
from maskvq_jax.data import runs as checkpoints
from maskvq_jax.evaluation import features
from maskvq_jax.core import distributed
from maskvq_jax.core import files
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.core.progress import Progress


def parse_args(argv=None):
  p = cli.ArgumentParser(prog="python -m maskvq_jax.tools.export_tokens",
                         description=__doc__.split("\n\n")[0])
  p.add_argument("--tokenizer_workdir", required=True,
                 help="stage-1 workdir or tokenizer directory")
  p.add_argument("--split", default="train")
  p.add_argument("--out", required=True)
  p.add_argument("--dataset", default=None, help="default: the stage-1 run's training dataset")
  p.add_argument("--source", choices=("tfds", "procedural"), default=None)
  p.add_argument("--data_dir", default=None)
  p.add_argument("--folder", default=None)
  p.add_argument("--num", type=int, default=None,
                 help="examples (procedural: required size; tfds: -1 or unset = whole split)")
  p.add_argument("--label_key", default="label", help="'' for none")
  p.add_argument("--caption_key", default="", help="e.g. captions/text (coco_captions)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="per host (default 16 per device); padded up to a multiple of the local "
                      "devices")
  distributed.add_flags(p)
  return p.parse_args(argv)


def _input_block(args, loc, res) -> mlc.ConfigDict:
  d = checkpoints.dataset_defaults(loc) or {}
  src = args.source or d.get("source") or "tfds"
  name = args.dataset or d.get("name")
  if not name:
    raise cli.UserError("--dataset is required for a tokenizer directory (no training config)")
  num = args.num if args.num is not None else (8192 if src == "procedural" else -1)
  return mlc.ConfigDict(dict(name=name, source=src, data_dir=args.data_dir or d.get("data_dir", ""),
                             folder=args.folder or d.get("folder", ""), res=res,
                             num_train_examples=num, data_seed=d.get("data_seed", 0)))


def export(args) -> dict:
  with cli.user_input():  # the directory the user named
    tok, variables, info = checkpoints.load_tokenizer(args.tokenizer_workdir)
    loc = checkpoints.describe(args.tokenizer_workdir)
  if tok.dense:
    raise cli.UserError(f"{args.tokenizer_workdir} is a dense VQGAN; export needs an MQ-VAE")
  inp = _input_block(args, loc, int(tok.resolution))
  out_dir = files.absolute(args.out)  # a URL (gs://...) stays a URL
  split_dir = files.join(out_dir, args.split)
  fname = f"tokens-{jax.process_index():05d}-of-{jax.process_count():05d}.array_record"
  meta_path = files.join(out_dir, stage2_data.TOKENS_META)
  geometry = checkpoints.tokenizer_info(tok)
  meta = {"tokenizer": files.absolute(args.tokenizer_workdir), "model": geometry,
          "num_tokens": int(tok.num_tokens), "splits": {}}
  if files.exists(meta_path):
    meta = stage2_data.tokens_meta(out_dir)
    if meta["model"] != geometry:
      raise cli.UserError(f"{out_dir} holds tokens of another tokenizer ({meta['model']})")
    if args.split in meta["splits"]:
      raise cli.UserError(f"{out_dir} already holds split {args.split!r}; choose a new --out")
  if files.exists(files.join(split_dir, fname)):
    raise cli.UserError(f"{split_dir}/{fname} exists; refusing to overwrite it")

  num = None if inp.num_train_examples < 0 else inp.num_train_examples
  with cli.user_input():  # the dataset and split the flags (or the run's config) name
    src = _host_share(input_pipeline.get_source(inp, args.split, num_examples=num, whole=True))
  local_devices = jax.local_devices()
  bs = (sharding_lib.padded_size("--batch_size", args.batch_size, len(local_devices), 1,
                                 note=True)  # padded rows are dropped (see _write_records)
        if args.batch_size else 16 * len(local_devices))
  mesh = features.data_mesh(local_devices)
  batch_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  repl = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  encode = jax.jit(lambda v, x: tok.apply(v, x.astype(jnp.float32) / 127.5 - 1.0, train=False,
                                          method="encode", rngs={"mask": jax.random.key(0)})[:2],
                   in_shardings=(repl, batch_sh), out_shardings=(batch_sh, batch_sh))
  tok_vars = jax.device_put(variables, repl)

  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  # ArrayRecord writes local files only: a local `.partial` (renamed) or a temp file (uploaded)
  with files.staged_output(files.join(split_dir, fname)) as tmp:
    written = _write_records(array_record_module.ArrayRecordWriter(tmp, "group_size:1"), args, src,
                             inp, bs, encode, tok_vars, batch_sh)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("export_tokens_done")
  if jax.process_index() == 0:
    meta["splits"][args.split] = {
        "files": [f"{args.split}/tokens-{i:05d}-of-{jax.process_count():05d}.array_record"
                  for i in range(jax.process_count())],
        "num_examples_host0": written, "dataset": inp.name, "source": inp.source}
    files.write_text(meta_path, json.dumps(meta, indent=2))  # atomic (.partial + rename)
  return {"written": written, "seconds": time.time() - t0, "out": out_dir}


def _host_share(src, process_index=None, process_count=None):
  """This host's consecutive rows of the whole split: [n*i//c, n*(i+1)//c). Unlike the training
  share (equal per host, the remainder dropped) every example is exported once: the hosts' files,
  in host order, hold the split in the 1-process order."""
  i = jax.process_index() if process_index is None else process_index
  c = jax.process_count() if process_count is None else process_count
  n = len(src)
  return input_pipeline.Rows(src, np.arange(n * i // c, n * (i + 1) // c))


def _write_records(writer, args, src, inp, bs, encode, tok_vars, batch_sh) -> int:
  """Encodes this host's share batch by batch into `writer` (closed at the end). Returns count."""
  n_local = len(src)
  progress = Progress(f"export/{args.split}", n_local, every_s=5.0, enabled=True)
  written = 0
  for lo in range(0, n_local, bs):
    exs = [src[i] for i in range(lo, min(lo + bs, n_local))]
    pre = [input_pipeline.preprocess(e, None, res=inp.res, augment="none", keep_mask=False)
           for e in exs]
    keep = [(e, p) for e, p in zip(exs, pre) if p is not None]  # undecodable images: skipped
    if not keep:
      continue
    imgs = np.stack([p["image"] for _, p in keep])
    pad = bs - len(imgs)  # static shapes: pad the last batch, drop the padded rows
    imgs = np.concatenate([imgs, np.zeros((pad,) + imgs.shape[1:], np.uint8)])
    codes, positions = jax.device_get(encode(tok_vars, jax.device_put(imgs, batch_sh)))
    for j, (e, _) in enumerate(keep):
      label = int(stage2_data._lookup(e, args.label_key)) if args.label_key and _has(e, args.label_key) else -1  # pylint: disable=protected-access
      caption = stage2_data.caption_of(e, args.caption_key, None) if (
          args.caption_key or "shape" in e) else ""
      writer.write(stage2_data.encode_record(codes[j], positions[j], label, caption))
      written += 1
    progress(min(lo + bs, n_local))
  writer.close()
  return written


def _has(ex, key):
  try:
    stage2_data._lookup(ex, key)  # pylint: disable=protected-access
    return True
  except KeyError:
    return False


@cli.entry_point
def main(argv=None) -> int:
  args = parse_args(argv)
  if args.batch_size is not None and args.batch_size < 1:
    raise cli.UserError(f"--batch_size={args.batch_size}: expected an int >= 1")
  with cli.user_input(ValueError):
    distributed.initialize_from_args(args)
  out = export(args)
  print(f"wrote {out['written']} examples ({jax.process_count()} host(s)) to {out['out']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
