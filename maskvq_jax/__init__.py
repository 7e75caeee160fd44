"""maskvq_jax: MQ-VAE + Stackformer (masked vector quantization) in JAX/Flax."""

__version__ = "0.1.0"
