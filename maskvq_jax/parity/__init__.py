"""Parity with the authors' PyTorch code: weight converters and golden-vector checks.

Nothing on the training path imports this package; `tools.check_golden` and
`tools.convert_official` do.

  convert_mqvae.py        official MQ-VAE state dicts / configs -> our variables and kwargs.
  convert_stackformer.py  official Stackformer state dicts / configs -> ours.
  golden_rows.py          one comparison row (name, max error, tolerance) and how it is judged.
  golden_stackformer.py   Stackformer rows: logits, losses, filters, greedy decoding.
  golden_fid.py           FID InceptionV3 pool3 rows.
"""
