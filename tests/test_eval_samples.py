"""`evaluate --samples`: folders of images (recursive, natural order, decoded like training images),
sampling-run shards (index order; a missing shard is an error) and `--num_samples` (first N, or a
clear refusal), down to the CLI's report."""
import json

import numpy as np
from PIL import Image
import pytest

from maskvq_jax import evaluate
from maskvq_jax.evaluation import data


def _img(v, size=16):
  return np.full((size, size, 3), v, np.uint8)


def _png_tree(root):
  """Files whose natural order differs from plain string order; returns the expected values."""
  layout = {"a/img2.png": 10, "a/img10.png": 20, "b/img1.png": 30, "img3.png": 40,
            "img20.png": 50, "z/deep/x.png": 60}
  for rel, v in layout.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_img(v)).save(root / rel)
  (root / "notes.txt").write_text("not an image")
  return [10, 20, 30, 40, 50, 60]


def test_png_folder_is_read_recursively_in_natural_order(tmp_path):
  want = _png_tree(tmp_path)
  src, n = data.samples_source(str(tmp_path))
  assert n == 6
  assert [int(src[i]["image"][0, 0, 0]) for i in range(n)] == want
  src, n = data.samples_source(str(tmp_path), num=4)
  assert n == 4 and len(src) == 4 and int(src[3]["image"][0, 0, 0]) == 40
  with pytest.raises(ValueError) as e:
    data.samples_source(str(tmp_path), num=7)
  assert str(e.value) == f"--num_samples=7, but --samples {tmp_path} holds only 6 samples"
  with pytest.raises(ValueError, match="--num_samples=0 must be >= 1"):
    data.samples_source(str(tmp_path), num=0)
  Image.fromarray(_img(1, 8)).save(tmp_path / "img21.png")
  src, _ = data.samples_source(str(tmp_path))
  with pytest.raises(ValueError, match="has shape .*8, 8, 3.*all samples must have one size"):
    src[5]  # pylint: disable=pointless-statement  # img21.png sorts before z/deep/x.png


def test_shards_missing_indices_and_counts_are_errors(tmp_path):
  imgs = np.stack([_img(i) for i in range(8)])
  np.savez(tmp_path / "samples_h00000_00000.npz", images=imgs[[0, 2]], index=[0, 2])
  np.savez(tmp_path / "samples_h00001_00000.npz", images=imgs[[1, 3]], index=[1, 3])
  np.savez(tmp_path / "samples_h00000_00001.npz", images=imgs[[6]], index=[6])
  with pytest.raises(ValueError) as e:
    data.samples_source(str(tmp_path))
  assert str(e.value) == (f"sample indices 4-5 are missing from the 3 shards under {tmp_path} "
                          "(5 samples, highest index 6): a shard is missing or incomplete")
  np.savez(tmp_path / "samples_h00001_00001.npz", images=imgs[[4, 5]], index=[4, 5])
  src, n = data.samples_source(str(tmp_path))
  assert n == 7 and [int(src[i]["image"][0, 0, 0]) for i in range(n)] == list(range(7))
  (tmp_path / "sample_info.json").write_text(json.dumps({"num": 8}))
  with pytest.raises(ValueError, match=r"sample_info.json says 8 samples, but the 4 shards under "
                                       r".* hold 7: a shard is missing"):
    data.samples_source(str(tmp_path))
  (tmp_path / "sample_info.json").write_text(json.dumps({"num": 7}))
  src, n = data.samples_source(str(tmp_path), num=3)
  assert n == 3 and int(src[2]["image"][0, 0, 0]) == 2


def test_plain_npz_shards_are_read_in_natural_file_order(tmp_path):
  imgs = np.stack([_img(i) for i in range(6)])
  np.savez(tmp_path / "part_10.npz", images=imgs[4:])
  np.savez(tmp_path / "part_2.npz", images=imgs[2:4])
  np.savez(tmp_path / "part_1.npz", images=imgs[:2])
  src, n = data.samples_source(str(tmp_path))
  assert n == 6 and [int(src[i]["image"][0, 0, 0]) for i in range(n)] == list(range(6))


def test_evaluate_cli_scores_a_png_folder_and_honours_num_samples(tmp_path, capsys):
  from maskvq_jax.data.builders.shapes import generate  # pylint: disable=import-outside-toplevel
  samples = np.stack([generate.make_example(7, i, 16, "train")["image"] for i in range(6)])
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, s in enumerate(samples):  # s0 s5 s10 ...: string order would take s0 s10 s15 s20
    Image.fromarray(s).save(folder / f"s{5 * i}.png")
  np.savez(tmp_path / "first4.npz", images=samples[:4])
  common = ["--dataset", "shapes/16", "--source", "procedural", "--num_examples", "4",
            "--split", "validation", "--res", "16", "--batch_size", "8",
            "--stats_cache", str(tmp_path / "cache"), "--metrics", "fid"]
  out = tmp_path / "r_png.json"
  assert evaluate.main(["--samples", str(folder), "--num_samples", "4", "--output", str(out),
                        *common]) == 0
  rep = json.loads(out.read_text())
  assert rep["num_examples"]["samples"] == 4
  out2 = tmp_path / "r_npz.json"
  assert evaluate.main(["--samples", str(tmp_path / "first4.npz"), "--output", str(out2),
                        *common]) == 0
  assert rep["metrics"]["fid"] == pytest.approx(json.loads(out2.read_text())["metrics"]["fid"],
                                                rel=1e-6)
  capsys.readouterr()
  out3 = tmp_path / "r_too_many.json"
  assert evaluate.main(["--samples", str(folder), "--num_samples", "9", "--output", str(out3),
                        *common]) == 2
  assert capsys.readouterr().err.splitlines()[0] == (
      f"error: --num_samples=9, but --samples {folder} holds only 6 samples")
  assert not out3.exists()
