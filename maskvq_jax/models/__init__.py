"""Flax Linen models. Importing this package never imports TensorFlow."""
from maskvq_jax.models.demasker import Demasker
from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.models.discriminator import NLayerDiscriminator
from maskvq_jax.models.inception import FIDInceptionV3
from maskvq_jax.models.layers import AttnBlock, Downsample, ResnetBlock, Upsample
from maskvq_jax.models.masker import Masker
from maskvq_jax.models.mqvae import MQVAE, validate_mqvae_kwargs
from maskvq_jax.models.quantizer import EMAVectorQuantizer
from maskvq_jax.models.stackformer import Stackformer
from maskvq_jax.models.text_encoder import ByteTextEncoder
from maskvq_jax.models.vqgan import Decoder, Encoder, TamingDecoder
