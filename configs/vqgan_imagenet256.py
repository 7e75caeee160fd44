r"""Dense VQGAN baseline: the MQ-VAE backbone without mask/de-mask, same losses and schedule.

Every region is quantized (32x32 codes) and the full taming decoder is used (MQVAE(dense=True)).

  python -m maskvq_jax.main --config configs/vqgan_imagenet256.py --workdir gs://bucket/vqgan_in
  python -m maskvq_jax.main --config configs/vqgan_imagenet256.py:runlocal --workdir /tmp/vq
"""
from configs import common
from configs import mqvae_imagenet256


def get_config(arg=None):
  arg = common.parse_arg(arg, batch=256, runlocal=False, rules="dp")
  return mqvae_imagenet256.get_config(
      f"dense=true,keep=1.0,batch={arg.batch},runlocal={arg.runlocal},rules={arg.rules}")
