"""Stage 2: the Stackformer (and the dense raster GPT baseline) on the tokenizer's codes.

  trainer.py   the sharded training loop (`train(config, workdir)`), eval, sample grids.
  losses.py    code and position cross-entropies.
  sampling.py  fixed-length KV-cached sampler (code, then position; top-k / top-p; guidance).
"""
