r"""The authors' PyTorch MQ-VAE at the stage-1 bench config, for side-by-side timing.

  python benchmarks/bench_authors_torch.py --authors_repo /path/to/MaskedVectorQuantization

Needs torch and einops in the interpreter that runs it (not project dependencies) and a checkout
of CrossmodalGroup/MaskedVectorQuantization; their modules are imported from that checkout, not
copied here. Prints one JSON line: (a) forward + backward of L1 + quantizer loss in training mode
and (c) eval reconstruction, images/s, batch 8, 2 threads.

Their de-mask module fills a `nn.Parameter(...).to(device)` in place, which only works on GPU
(on CPU torch refuses the in-place write to a leaf); for the CPU timing that one `nn.Parameter`
call is made a plain tensor after the modules are built. The arithmetic is unchanged.
"""
import argparse
import json
import statistics
import sys
import time
import types


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--authors_repo", required=True)
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()
  sys.path.insert(0, args.authors_repo)
  import torch  # pylint: disable=import-outside-toplevel
  from modules.diffusionmodules.model import Encoder  # pylint: disable=import-outside-toplevel
  from modules.masked_quantization import demasker_vanilla  # pylint: disable=import-outside-toplevel
  from modules.masked_quantization.decoder import Decoder  # pylint: disable=import-outside-toplevel
  from modules.masked_quantization.masker_vanilla_refine import VanillaMasker  # pylint: disable=import-outside-toplevel
  from modules.vector_quantization.quantize2 import VectorQuantize2  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(args.threads)
  enc = Encoder(ch=64, out_ch=3, ch_mult=(1, 1, 2), num_res_blocks=2, attn_resolutions=[16], in_channels=3,
                resolution=64, z_channels=128, double_z=False)
  dec = Decoder(ch=64, in_ch=128, out_ch=3, ch_mult=(1, 1, 2), num_res_blocks=2, resolution=64,
                attn_resolutions=[16])
  masker = VanillaMasker(topk_ratio=0.25, input_token_num=256, input_dim=128, patch_size=4,
                         score_pred_net_mode="2layer", codebook_dim=128)
  demasker = demasker_vanilla.VanillaDemasker(codebook_dim=128, output_dim=128, height_and_width=16, n_layer=4)
  vq = VectorQuantize2(codebook_size=1024, codebook_dim=128, accept_image_fmap=False, channel_last=False)
  demasker_vanilla.nn = types.SimpleNamespace(Parameter=lambda t, requires_grad=True: t)  # CPU fill
  mods = torch.nn.ModuleList([enc, dec, masker, demasker, vq])
  x = torch.rand(8, 3, 64, 64) * 2 - 1

  def forward():
    m = masker(enc(x))
    q, loss, _ = vq(m["sample_features"])
    return dec(demasker(q, None, m["sample_index"], m["remain_index"], m["squeezed_mask"])), loss

  def train_step():
    mods.train()
    rec, loss = forward()
    ((rec - x).abs().mean() + loss).backward()

  def eval_step():
    mods.eval()
    with torch.no_grad():
      forward()

  def bench(fn):
    fn()
    ts = []
    for _ in range(args.iters):
      t = time.perf_counter()
      fn()
      ts.append(time.perf_counter() - t)
    return round(8 / statistics.median(ts), 2)

  print(json.dumps({"authors_train_fwd_bwd": bench(train_step), "authors_recon": bench(eval_step),
                    "torch": torch.__version__, "threads": args.threads}))


if __name__ == "__main__":
  main()
