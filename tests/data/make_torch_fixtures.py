"""Writes the tiny torch checkpoints that tests/test_torch_zip.py reads. NEEDS TORCH.

Why a script: the reader in maskvq_jax/tools/torch_zip.py must match what real `torch.save`
writes, so the fixtures come from torch itself. It was run once, in a throw-away environment
(never add torch to the project's requirements):

  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
  /tmp/torchenv/bin/python tests/data/make_torch_fixtures.py

Outputs (in this folder, a few KB together):
  torch_ckpt_small.ckpt    Lightning-like dict saved in torch's zip format;
  torch_ckpt_legacy.pt     the same dict in the legacy (pre-1.6) stream format;
  torch_ckpt_expected.npz  every tensor as torch sees it, contiguous; bfloat16 as float32.
"""
import collections
import pathlib

import numpy as np
import torch

OUT = pathlib.Path(__file__).resolve().parent


class AttributeDict(dict):
  """Stands in for Lightning's AttributeDict: a dict subclass the reader must not import."""


class CallbackState:
  """Stands in for a Lightning callback object with attributes."""

  def __init__(self, monitor, best):
    self.monitor = monitor
    self.best = best


def build():
  g = torch.Generator().manual_seed(0)
  base = torch.arange(24, dtype=torch.float32) * 0.5 - 3.0
  wide = torch.randn(5, 3, generator=g)
  sd = collections.OrderedDict()
  sd["encoder.conv_in.weight"] = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=g))
  sd["encoder.norm.weight"] = torch.randn(8, generator=g).half()
  sd["decoder.proj.weight"] = torch.randn(5, 6, generator=g).bfloat16()
  sd["quantize.embed_ind"] = torch.tensor([0, -1, 2**40, 7, -(2**62)], dtype=torch.int64)
  sd["quantize.count"] = torch.tensor([3, -4, 2**30], dtype=torch.int32)
  sd["masker.bn.running_var"] = torch.rand(6, generator=g, dtype=torch.float64)
  sd["masker.flags"] = torch.tensor([True, False, True])
  sd["masker.bytes"] = torch.tensor([0, 17, 255], dtype=torch.uint8)
  sd["transposed"] = wide.t()                     # strides (1, 3): non-contiguous
  sd["sliced_columns"] = wide[1:4, ::2]           # offset 3, strides (3, 2)
  sd["scalar"] = torch.tensor(2.5)                # 0-d
  sd["shared_a"] = base[2:8]                      # one storage, offset 2
  sd["shared_b"] = base[10:22].view(3, 4)         # same storage, offset 10
  sd["bf16_transposed"] = torch.randn(2, 3, generator=g).bfloat16().t()
  sd["uint16"] = torch.tensor([1, 2, 65535], dtype=torch.uint16)  # _rebuild_tensor_v3
  ckpt = {
      "state_dict": sd,
      "epoch": 3,
      "global_step": 1234,
      "pytorch-lightning_version": "1.5.10",
      "hyper_parameters": AttributeDict(
          ddconfig={"ch": 128, "ch_mult": (1, 1, 2), "dropout": 0.0}, lr=4.5e-6, name="mqvae",
          blob=b"\x00\xffbytes"),
      "callbacks": {"ModelCheckpoint": CallbackState("val/rec_loss", torch.tensor(0.125))},
      "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(2, 2) * 0.25}},
                            "param_groups": [{"lr": 1e-4, "params": [0]}]}],
  }
  return ckpt


def expected(ckpt):
  def arr(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
      t = t.float()
    if t.dtype == torch.uint16:
      t = t.to(torch.int32)
      return t.numpy().astype(np.uint16)
    return t.numpy().copy()

  out = {f"state_dict/{k}": arr(v) for k, v in ckpt["state_dict"].items()}
  out["callbacks/best"] = arr(ckpt["callbacks"]["ModelCheckpoint"].best)
  out["optimizer/exp_avg"] = arr(ckpt["optimizer_states"][0]["state"][0]["exp_avg"])
  return out


def main():
  ckpt = build()
  torch.save(ckpt, OUT / "torch_ckpt_small.ckpt")
  legacy = dict(ckpt)
  legacy["state_dict"] = collections.OrderedDict(
      (k, v) for k, v in ckpt["state_dict"].items() if k != "uint16")  # legacy format lacks it
  torch.save(legacy, OUT / "torch_ckpt_legacy.pt", _use_new_zipfile_serialization=False)
  np.savez(OUT / "torch_ckpt_expected.npz", **expected(ckpt))
  for name in ("torch_ckpt_small.ckpt", "torch_ckpt_legacy.pt", "torch_ckpt_expected.npz"):
    print(name, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
  main()
