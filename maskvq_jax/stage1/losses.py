"""Stage-1 loss terms as small pure functions (no TensorFlow, no Flax state).

Mirrors taming's `VQLPIPSWithDiscriminator` as configured by the MQ-VAE authors
(modules/losses/vqperceptual.py): nll = mean L1 + w_p * mean LPIPS, generator GAN loss
-mean(D(x_rec)), hinge discriminator loss, and the VQGAN adaptive weight computed from gradient
norms at the decoder's last conv kernel. The trainer composes them with a single forward.
"""
import jax
import jax.numpy as jnp


def l1(x, y):
  """Mean absolute error over all elements (float32)."""
  return jnp.mean(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))


def hinge_d_loss(logits_real, logits_fake):
  """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def vanilla_d_loss(logits_real, logits_fake):
  """0.5 * (mean softplus(-D(x)) + mean softplus(D(x_rec)))."""
  return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


D_LOSSES = {"hinge": hinge_d_loss, "vanilla": vanilla_d_loss}


def d_loss_fn(name):
  if name not in D_LOSSES:
    raise ValueError(f"unknown disc_loss {name!r}; choose one of {sorted(D_LOSSES)}")
  return D_LOSSES[name]


def generator_loss(logits_fake):
  """Non-saturating-free taming form: -mean(D(x_rec))."""
  return -jnp.mean(logits_fake)


def adaptive_weight(nll_grad, gan_grad, *, disc_weight=0.75, max_weight=1.0, eps=1e-4):
  """VQGAN adaptive weight ||g_nll|| / (||g_gan|| + eps), clipped to [0, 1e4], x disc_weight, <= max.

  Args:
    nll_grad: gradient of the reconstruction loss w.r.t. the decoder's last kernel.
    gan_grad: gradient of the generator GAN loss w.r.t. the same kernel.
    disc_weight: the config's `disc_weight` (0.75 for MQ-VAE).
    max_weight: `disc_weight_max` (1.0 for MQ-VAE); None or <= 0 disables the cap.
    eps: the 1e-4 of taming.

  Returns:
    A float32 scalar with stopped gradient. Under jit the gradients are those of the global-batch
    loss, so one weight serves the whole batch (the authors' DDP code computes one per GPU from
    its local batch before the gradients are averaged).
  """
  n1 = jnp.linalg.norm(nll_grad.astype(jnp.float32).ravel())
  n2 = jnp.linalg.norm(gan_grad.astype(jnp.float32).ravel())
  w = jnp.clip(n1 / (n2 + eps), 0.0, 1e4) * disc_weight
  if max_weight is not None and max_weight > 0:
    w = jnp.minimum(w, max_weight)
  return jax.lax.stop_gradient(w)


def psnr(x, y, max_val=2.0):
  """Per-example PSNR [B] of images in [-1, 1] (peak-to-peak 2)."""
  mse = jnp.mean(jnp.square(x.astype(jnp.float32) - y.astype(jnp.float32)), axis=(1, 2, 3))
  return 10.0 * jnp.log10(max_val**2 / jnp.maximum(mse, 1e-10))
