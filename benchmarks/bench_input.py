r"""Input pipeline alone (no model): images/s of the stage-1 training batches; one JSON line.

Times `data.pipeline.train_iter` of a config: source -> grain (decode / augment, `num_threads`)
-> global jax.Arrays on all local devices with the device prefetch, blocking on every batch. Also
reports the host side alone (grain batches, no device transfer). Compare `images_per_s` with a
train step's images/s (`throughput/images_per_s` in the logs): the input keeps up when it is
larger. Imports no TensorFlow for procedural sources.

  python benchmarks/bench_input.py [--config configs/quickstart.py:steps=10] [--batches 50]
      [--set input.batch_size=64 --set input.num_threads=8 --set input.device_prefetch=2]
"""
import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from configs import common
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.data import pipeline
# pylint: enable=g-import-not-at-top,wrong-import-position


def load_config(spec: str, sets: list[str]):
  """`path.py[:arg]` -> config, with `key.sub=value` overrides typed like the existing field."""
  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location("bench_input_config", path)
  if mod_spec is None:
    raise SystemExit(f"--config={spec!r}: no such config file")
  mod = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(mod)
  c = mod.get_config(arg or None)
  for item in sets:
    key, eq, value = item.partition("=")
    if not eq:
      raise SystemExit(f"--set {item!r}: expected key=value")
    *parents, last = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    if last not in node:
      raise SystemExit(f"--set {item!r}: unknown field {key!r}")
    node[last] = common._coerce(value, node[last])  # pylint: disable=protected-access
  return c


def _rate(it, batches, warmup, batch, block):
  for _ in range(warmup):
    b = next(it)
  if block:
    jax.block_until_ready(b)
  t = time.perf_counter()
  for _ in range(batches):
    b = next(it)
    if block:
      jax.block_until_ready(b)
  return batch * batches / (time.perf_counter() - t)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="configs/quickstart.py")
  ap.add_argument("--set", action="append", default=[], help="key=value override (repeatable)")
  ap.add_argument("--batches", type=int, default=50)
  ap.add_argument("--warmup", type=int, default=5)
  args = ap.parse_args(argv)
  c = load_config(args.config, args.set)
  mesh = sharding_lib.make_mesh(c.mesh)
  sharding = sharding_lib.batch_sharding(mesh, sharding_lib.get_rules(c.sharding_rules))
  inp = c.input
  device = pipeline.train_iter(c, sharding)
  images = _rate(device, args.batches, args.warmup, inp.batch_size, block=True)
  host_it = device._it  # pylint: disable=protected-access  # the grain iterator underneath
  host = _rate(host_it, args.batches, args.warmup, inp.batch_size // jax.process_count(),
               block=False)
  print(json.dumps({
      "bench": "input", "config": args.config, "dataset": inp.name, "source": inp.source,
      "res": inp.res, "augment": inp.augment, "batch_size": inp.batch_size,
      "num_threads": inp.num_threads, "device_prefetch": inp.get("device_prefetch", 2),
      "devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "batches": args.batches, "images_per_s": round(images, 1),
      "images_per_s_per_device": round(images / jax.device_count(), 1),
      "host_images_per_s": round(host, 1), "skipped_images": pipeline.SKIPPED.value}))


if __name__ == "__main__":
  main()
