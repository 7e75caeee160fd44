r"""The authors' PyTorch Stackformer sampler at the sampling bench config, for side-by-side timing.

  python benchmarks/bench_authors_sampling.py --authors_repo /path/to/MaskedVectorQuantization

Needs torch and einops in the interpreter that runs it (not project dependencies) and a checkout
of CrossmodalGroup/MaskedVectorQuantization; their modules are imported from that checkout, not
copied here. Prints one JSON line: tokens/s (batch * K / seconds, median over runs after one
warm-up run) of their un-cached sampling loop, batch 8, 2 threads; also the process CPU seconds
per run (on a loaded machine, threads waiting for a core can spin and inflate both figures).

What runs is theirs: the transformer both released stage-2 configs name
(`modules.masked_quantization_stage2.stackedgpt.ReverseStackedPositionGPT`) at the bench config of
benchmarks/bench_sampling.py (d 256, 8 heads, 4+4 layers, 1024 codes + sos, 256 positions + sos,
random init by their `_init_weights`), sampled by their own loop `ReverseStackformer.sample`
(models/stage2_masked/stackformer_uncond.py: full re-forward per token, their top-k / top-p filters
and repeated-position blocking) with the arguments their `log_images` passes (sos code and sos
position as the condition, temperature 1, sample=True, top_k 100, top_k_pos 10, top_p 0.95,
top_p_pos 0.95: the settings bench_sampling.py gives our sampler). The wrapper is built without
its stage-1 model (`sample` only uses `self.transformer`); where `pytorch_lightning`, `requests` or
`tqdm` are not installed, an empty stand-in is registered before the import (`LightningModule` =
`torch.nn.Module`): the wrapper module imports them but the sampling loop uses none of them.
"""
import argparse
import json
import os
import statistics
import sys
import time
import types

import sampling_bench_config  # benchmarks/ (the script's directory) is on sys.path


def _stand_ins(torch):
  """Registers empty modules for the wrapper's import-time dependencies that are not installed."""
  stubs = {"pytorch_lightning": {"LightningModule": torch.nn.Module},
           "requests": {}, "tqdm": {"tqdm": lambda it=None, **_: it}}
  missing = []
  for name, attrs in stubs.items():
    try:
      __import__(name)
    except ImportError:
      sys.modules[name] = types.SimpleNamespace(**attrs)
      missing.append(name)
  return missing


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--authors_repo", required=True)
  ap.add_argument("--runs", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  sampling_bench_config.add_args(ap)
  args = ap.parse_args()
  if not os.path.isfile(os.path.join(args.authors_repo, "models", "stage2_masked", "stackformer_uncond.py")):
    print(f"error: --authors_repo {args.authors_repo!r} is not a checkout of CrossmodalGroup/"
          "MaskedVectorQuantization (no models/stage2_masked/stackformer_uncond.py)", file=sys.stderr)
    sys.exit(2)
  sys.path.insert(0, args.authors_repo)
  import torch  # pylint: disable=import-outside-toplevel
  stood_in = _stand_ins(torch)
  from models.stage2_masked.stackformer_uncond import ReverseStackformer  # pylint: disable=import-outside-toplevel
  from modules.masked_quantization_stage2.stackedgpt import ReverseStackedPositionGPT  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)

  n, b, k = args.grid_tokens, args.batch, args.steps
  sos, sos_pos = args.codebook, n  # As in their configs: 1024 codes + sos 1024, positions + sos.
  model = ReverseStackformer.__new__(ReverseStackformer)
  super(ReverseStackformer, model).__init__()  # Lightning (or stand-in) init; no stage-1 model.
  model.transformer = ReverseStackedPositionGPT(
      vocab_size=args.codebook + 1, position_size=n + 1, block_size=n, position_layer=args.layers,
      value_layer=args.layers, n_head=args.heads, n_embd=args.d_model, embd_pdrop=0.1,
      resid_pdrop=0.1, attn_pdrop=0.1, add_absolute_position=True)
  model.eval()
  c = torch.full((b, 1), sos, dtype=torch.long)
  c_pos = torch.full((b, 1), sos_pos, dtype=torch.long)
  start = c[:, :0]

  def run():
    return model.sample(start, c, start, c_pos, steps=k, temperature=1.0, sample=True, top_k=100,
                        top_k_pos=10, top_p=0.95, top_p_pos=0.95)

  codes, pos = run()  # Warm-up; also checks the loop did what it should.
  if codes.shape != (b, k) or pos.shape != (b, k) or int(codes.max()) >= sos or int(pos.max()) >= n:
    raise SystemExit(f"error: their sampler returned codes {tuple(codes.shape)} max {int(codes.max())}, "
                     f"positions {tuple(pos.shape)} max {int(pos.max())}")
  if any(len(set(row.tolist())) != k for row in pos):
    raise SystemExit("error: their sampler repeated a position")
  load_before = os.getloadavg()[0]
  times, cpu = [], []
  for _ in range(args.runs):
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  seconds = statistics.median(times)
  print(json.dumps({
      "bench": "authors_sampling", "tokens_per_s": round(b * k / seconds, 1),
      "images_per_s": round(b / seconds, 3), "seconds": round(seconds, 4),
      "tokens_per_s_best_run": round(b * k / min(times), 1),
      "cpu_seconds_per_run": round(statistics.median(cpu), 3), "runs": args.runs, "batch": b,
      "steps": k, "layers": f"{args.layers}+{args.layers}", "d_model": args.d_model,
      "torch": torch.__version__, "threads": args.threads, "stand_ins": stood_in,
      "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}))


if __name__ == "__main__":
  main()
