"""Evaluation metrics for MQ-VAE tokenizers and Stackformer samples.

Why a package of small modules: each metric is used on its own (the trainer's periodic evals,
the `maskvq_jax.evaluate` CLI, notebooks), and the heavy pieces (InceptionV3, LPIPS, TFDS) must
only be imported by the code paths that need them.

  step_metrics.py   metric sums computed inside jitted steps (PSNR, LPIPS, mask coverage).
  fid.py            Frechet distance in float64; the standard `mu`/`sigma` .npz format.
  inception_score.py  IS from pool3 features and a user-supplied logits head (.npz).
  prec_recall.py    k-NN manifold precision / recall (Kynkaanniemi et al., 2019).
  codebook.py       codebook usage over a whole split (used fraction) and perplexity.
  features.py       sharded, padded, exactly-once batch evaluation over devices and hosts.
  data.py           evaluation image sources (TFDS / procedural / sample folders), host splits.
  reference.py      cached reference statistics / features of a dataset split.
  recon.py          tokenizer reconstruction pass: PSNR, SSIM, LPIPS, codes, masks, pool3.
  mask_analysis.py  score heat maps, kept-region overlays, kept-on-object vs chance.
  generate.py       stage-2 sampling -> images, with tokens/s.
  report.py         JSON report and the printed table.

Command lines: `python -m maskvq_jax.evaluate` (metrics -> JSON report) and
`python -m maskvq_jax.tools.ablation_report` (reports of a mask-ratio sweep -> Markdown + PNG).
"""
