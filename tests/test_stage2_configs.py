"""Stage-2 configs: parameter counts (eval_shape, no memory), derived sizes, large-model sharding."""
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from configs import quickstart_stage2
from configs import stackformer_coco_text
from configs import stackformer_ffhq256
from configs import stackformer_imagenet256_class
from maskvq_jax.core import sharding as sharding_lib
from maskvq_jax.core import loop as utils
from maskvq_jax.models.mqvae import MQVAE
from maskvq_jax.models.stackformer import Stackformer
from maskvq_jax.stage2 import sampling
from maskvq_jax.stage2 import trainer

TOKENIZER_256 = MQVAE(resolution=256, keep_ratio=0.25)  # 32 x 32 grid, 1024 codes, K = 256


def _params(config):
  c = trainer.resolve_config(config, TOKENIZER_256)
  parts = trainer.build(c, TOKENIZER_256)
  abstract = jax.eval_shape(lambda: trainer.create_state(jax.random.PRNGKey(0), parts))
  return c, utils.num_params(abstract.params)


@pytest.mark.parametrize("module,arg,lo,hi", [
    (stackformer_ffhq256, "tokenizer=t", 307.5e6, 307.6e6),            # paper: 307M
    (stackformer_imagenet256_class, "tokenizer=t", 309.6e6, 309.7e6),  # + 1000 class rows
    (stackformer_imagenet256_class, "tokenizer=t,null=True", 309.6e6, 309.7e6),  # + null row
    (stackformer_imagenet256_class, "tokenizer=t,large", 611.8e6, 612.0e6),
])
def test_parameter_counts(module, arg, lo, hi):
  c, n = _params(module.get_config(arg))
  print(f"{module.__name__}:{arg}: {n / 1e6:.2f}M parameters")
  assert lo <= n <= hi, n
  assert c.model.position_size == 1025 and c.model.block_size == 1024
  # codes + sos (uncond) or codes + classes (+ the null class when asked for)
  want = 1025 if not c.model.n_classes else 1024 + 1000 + int(c.model.null_class)
  assert c.model.vocab_size == want


def test_imagenet_class_config_has_the_authors_vocabulary_and_guidance_one_argument_away():
  c, n = _params(stackformer_imagenet256_class.get_config("tokenizer=t"))
  g, n_null = _params(stackformer_imagenet256_class.get_config("tokenizer=t,null=True"))
  assert (c.model.n_classes, c.model.null_class, c.model.cond_dropout) == (1000, False, 0.0)
  assert c.model.vocab_size == 2024  # the authors' class vocabulary: 1024 codes + 1000 classes
  assert (g.model.null_class, g.model.cond_dropout, g.model.vocab_size) == (True, 0.1, 2025)
  assert n_null - n == 2 * 1024  # one more row in the code embedding and in the code head
  guided = sampling.SamplerConfig(steps=4, guidance_scale=2.0)
  labels = np.zeros((2,), np.int32)
  with pytest.raises(ValueError, match=r"guidance_scale=2\.0 needs a model with a null condition"):
    sampling.validate_stackformer_sampling(Stackformer(**trainer._model_kwargs(c)), guided,  # pylint: disable=protected-access
                                           labels=labels)
  assert sampling.validate_stackformer_sampling(
      Stackformer(**trainer._model_kwargs(g)), guided, labels=labels) == 2  # pylint: disable=protected-access


def test_text_config_resolves_and_validates():
  c = trainer.resolve_config(stackformer_coco_text.get_config("tokenizer=t"), TOKENIZER_256)
  assert c.model.text_dim == c.text_encoder.d_model and c.input.caption_key == "captions/text"
  trainer.validate_config(c.copy_and_resolve_references(), 8, TOKENIZER_256.num_tokens)


def test_large_model_fsdp_tp_shards_weights():
  config = stackformer_imagenet256_class.get_config("tokenizer=t,large,fsdp=4,model=2")
  c = trainer.resolve_config(config, TOKENIZER_256)
  assert c.sharding_rules == "fsdp_tp"
  parts = trainer.build(c, TOKENIZER_256)
  mesh = sharding_lib.make_mesh(c.mesh)
  rules = sharding_lib.get_rules(c.sharding_rules)
  _, sh = sharding_lib.state_shardings(lambda r: trainer.create_state(r, parts),
                                       jax.random.PRNGKey(0), mesh=mesh, rules=rules)
  assert c.model.scan_layers  # the large configs scan: blocks stacked on an unsharded layer axis
  fc = sh.params["code_blocks"]["mlp_fc"]["kernel"].spec
  assert fc == P(None, "fsdp", "model"), fc
  specs = lambda t: [s.spec for s in jax.tree.leaves(t, is_leaf=lambda x: hasattr(x, "spec"))]
  sharded = sum(s != P() for s in specs(sh.params))
  assert sharded >= 20, sharded
  # optimizer state follows the params' shardings (Adam's mu and nu)
  assert sum(s != P() for s in specs(sh.opt_state)) == 2 * sharded


def test_quickstart_tiny_is_small():
  c, n = _params(quickstart_stage2.get_config("tiny"))
  assert n < 200_000 and c.total_steps == 4
  assert np.isclose(c.model.cond_dropout, 0.1) and c.model.null_class
