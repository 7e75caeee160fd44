"""Stage 1: training the MQ-VAE tokenizer (or the dense VQGAN baseline).

  trainer.py  the sharded training loop (`train(config, workdir)`), steps, periodic evaluation.
  losses.py   L1 + LPIPS + PatchGAN hinge with the adaptive weight, commitment.
"""
