"""The dense raster GPT baseline as a stage-2 trainer (`config.trainer = "dense_gpt"`).

Why: the paper's stage-2 claim is that the Stackformer on the K kept tokens of an MQ-VAE is
faster and as good as a plain GPT on all N tokens of a dense VQGAN. This runs that baseline
through the SAME trainer (`stage2/trainer.py`: data, optimiser, schedule, checkpoints, eval,
sample grids), so a comparison differs only in the model and its tokens.

Given the same stage-2 config as a Stackformer (`configs/stackformer_common.stage2_base`), the
DenseGPT gets the same width (d_model, n_heads, dropouts) and depth n_layers = code_layers +
position_layers, i.e. the Stackformer's two stacks laid end to end (about the same parameter
count). It is unconditional: class or text conditions are refused. Sequence: [sos, c_0 .. c_{N-1}]
in raster order; loss = code cross-entropy over the N codes (there are no positions to predict).
"""
import jax.numpy as jnp

from maskvq_jax.models.dense_gpt import DenseGPT
from maskvq_jax.stage2 import losses as losses_stage2
from maskvq_jax.stage2 import sampling

TRAINER = "dense_gpt"


def is_dense(config) -> bool:
  return config.get("trainer", "") == TRAINER


def check_config(config, where: str):
  """What a dense GPT config cannot ask for (ValueError naming the field)."""
  m = config.model
  if m.n_classes or m.null_class or m.cond_dropout or config.text_encoder.enabled:
    raise ValueError(f"the dense GPT baseline ({where}) is unconditional: model.n_classes="
                     f"{m.n_classes}, model.null_class={m.null_class}, model.cond_dropout="
                     f"{m.cond_dropout}, text_encoder.enabled={config.text_encoder.enabled} must "
                     "be 0 / False")


def model_kwargs(m) -> dict:
  """DenseGPT kwargs from a resolved stage-2 `model` block (ConfigDict or a checkpoint's dict)."""
  return dict(vocab_size=int(m["vocab_size"]), block_size=int(m["block_size"]),
              d_model=int(m["d_model"]), n_heads=int(m["n_heads"]),
              n_layers=int(m["code_layers"]) + int(m["position_layers"]),
              embd_dropout=float(m["embd_dropout"]), resid_dropout=float(m["resid_dropout"]),
              attn_dropout=float(m["attn_dropout"]),
              # execution options (absent from older checkpoints' configs: the model defaults)
              **{k: m[k] for k in ("scan_layers", "remat_policy", "attention_impl") if k in m})


def sequences(model: DenseGPT, codes):
  """codes [B, N] (raster order) -> (inputs [B, N] = [sos, c_0 .. c_{N-2}], targets = codes)."""
  sos = jnp.full((codes.shape[0], 1), model.sos_token, jnp.int32)
  return jnp.concatenate([sos, codes[:, :-1]], axis=1), codes


def loss_and_metrics(model: DenseGPT, params, codes, positions, rng, *, train: bool,
                     valid=None):
  """(loss, {"code_loss", "code_acc"}) of raster-ordered codes (sorted by their positions);
  means over the `valid` rows (bool [B]) when given."""
  order = jnp.argsort(positions, axis=-1)
  codes = jnp.take_along_axis(codes, order, axis=1)
  inputs, targets = sequences(model, codes)
  logits = model.apply({"params": params}, inputs, train=train, rngs={"dropout": rng})
  loss = losses_stage2.cross_entropy(logits, targets, valid)
  return loss, {"code_loss": loss,
                "code_acc": losses_stage2.row_mean(jnp.argmax(logits, -1) == targets, valid)}


def sampler_config(config, steps: int) -> sampling.SamplerConfig:
  """Code filters of `config.sample` only (position ones and guidance do not apply)."""
  s = config.sample
  opt = lambda v, off: None if v is None or v <= off else v
  return sampling.SamplerConfig(steps=int(steps), temperature=float(s.temperature),
                                top_k=opt(s.top_k, 0), top_p=opt(s.top_p, 0.0))


def sample(model: DenseGPT, params, rng, config: sampling.SamplerConfig, batch_size: int):
  """sampling.SampleOutput of `batch_size` images (positions 0..N-1)."""
  return sampling.sample_dense(model, params, rng, config, batch_size=batch_size)
