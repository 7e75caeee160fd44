"""Token export: the exported tokens equal the trainer's on-the-fly tokens, and stage 2 trains on them."""
import json
import os

import jax
import numpy as np
import pytest

from maskvq_jax.data import tokens as stage2_data
from maskvq_jax.data.builders.shapes import generate as shapes_gen
from maskvq_jax.data import runs as checkpoints
from maskvq_jax.tools import export_tokens
from maskvq_jax.stage2 import trainer
from stage1_testlib import enable_compile_cache
from stage2_testlib import make_stage1_workdir, tiny

enable_compile_cache()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("exp")
  s1 = make_stage1_workdir(str(root / "stage1"))
  out = str(root / "tokens")
  for split in ("validation", "train"):
    assert export_tokens.main(["--tokenizer_workdir", s1, "--split", split, "--out", out,
                               "--num", "16", "--batch_size", "8"]) == 0
  return s1, out


def test_exported_tokens_equal_on_the_fly_tokens(exported):
  s1, out = exported
  meta = stage2_data.tokens_meta(out)
  assert sorted(meta["splits"]) == ["train", "validation"] and meta["num_tokens"] == 32
  src = stage2_data._TokenSource(stage2_data.token_files(out, "validation"), 0, 1)  # pylint: disable=protected-access
  assert len(src) == 16
  recs = [src[i] for i in range(16)]
  exs = [shapes_gen.make_example(0, i, 16, "validation") for i in range(16)]
  assert [r["label"] for r in recs] == [e["label"] for e in exs]
  assert recs[0]["caption"].startswith("a ") and recs[0]["caption"].split()[-1] in shapes_gen.SHAPES

  # the trainer's own on-the-fly path on the same images
  tok, tok_vars, _ = checkpoints.load_tokenizer(s1)
  parts = trainer.build(trainer.resolve_config(tiny(s1), tok), tok)
  batch = {"image": np.stack([e["image"] for e in exs])}
  codes, positions = jax.jit(lambda b, v: trainer.tokens_of(b, v, parts, jax.random.key(0)))(
      batch, tok_vars)
  np.testing.assert_array_equal(np.stack([r["codes"] for r in recs]), np.asarray(codes))
  np.testing.assert_array_equal(np.stack([r["positions"] for r in recs]), np.asarray(positions))


def test_stage2_trains_on_exported_tokens_and_refuses_foreign_ones(exported, tmp_path):
  s1, out = exported
  c = tiny(s1, "steps=2", **{"input.tokens_dir": out})
  res = trainer.train(c, str(tmp_path / "s2"))
  assert res["last_step"] == 2 and np.isfinite(res["train"]["loss"])
  other = make_stage1_workdir(str(tmp_path / "other"), "keep=0.75")
  with pytest.raises(ValueError, match="was exported with tokenizer"):
    trainer.train(tiny(other, "steps=2", **{"input.tokens_dir": out}), str(tmp_path / "s3"))


def test_export_never_overwrites(exported, capsys):
  s1, out = exported
  before = json.load(open(os.path.join(out, "tokens_meta.json")))
  assert export_tokens.main(["--tokenizer_workdir", s1, "--split", "train", "--out", out,
                             "--num", "16"]) == 2
  assert "already holds split 'train'" in capsys.readouterr().err
  assert json.load(open(os.path.join(out, "tokens_meta.json"))) == before


@pytest.mark.parametrize("n,hosts", [(17, 3), (32, 2), (2, 3), (10, 1)])
def test_export_host_shares_cover_every_example_once(n, hosts):
  """Each host exports its consecutive rows; the shares, in host order, are the whole split
  (the training share drops n % hosts examples; an export must not: 17 on 3 hosts wrote 15)."""
  rows = [list(export_tokens._host_share(list(range(n)), i, hosts))  # pylint: disable=protected-access
          for i in range(hosts)]
  assert sum(rows, []) == list(range(n))
  assert max(map(len, rows)) - min(map(len, rows)) <= 1
