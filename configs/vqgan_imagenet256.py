r"""Dense VQGAN baseline: the MQ-VAE backbone without mask/de-mask, same losses and schedule.

Every region is quantized (32x32 codes) and the full taming decoder is used (MQVAE(dense=True)).

  python -m maskvq_jax.main --config configs/vqgan_imagenet256.py --workdir gs://bucket/vqgan_in
  python -m maskvq_jax.main --config configs/vqgan_imagenet256.py:runlocal --workdir /tmp/vq

Pod slice, as `tools.plan` prints it:

  python -m maskvq_jax.tools.plan --config configs/vqgan_imagenet256.py --devices 32

rules dp on mesh data=-1 (POD_SLICE below). The 38M-parameter state is 0.43 GiB replicated per
device, so fsdp buys nothing; batch 256 divides every slice up to 256 chips (8 per chip on 32).
Eval batches that do not divide the batch shards are padded, never refused.
"""
from configs import common
from configs import mqvae_imagenet256


# Config arguments for a TPU pod slice / multi-node GPU run (tools/plan.py --devices N).
POD_SLICE = "rules=dp"


def get_config(arg=None):
  arg = common.parse_arg(arg, batch=256, runlocal=False, rules="dp")
  return mqvae_imagenet256.get_config(
      f"dense=true,keep=1.0,batch={arg.batch},runlocal={arg.runlocal},rules={arg.rules}")
