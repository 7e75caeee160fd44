r"""The small reproduction's report: tables, plots and pictures from a `tools/repro_small` root.

  python -m maskvq_jax.tools.repro_report --root runs/repro_small --out docs/repro_small

Reads only what the pipeline left in the root (each run's `evaluation/report.json`, its
checkpoints for the reconstruction grid, the stage-2 `evaluation/samples.npz`, `timings.json`,
`commands.txt`, `run.json`) and writes into `--out`:

  README.md            the tables (stage 1: rFID, LPIPS, PSNR, SSIM, codebook usage and
                       perplexity, mask kept fraction; stage 2: FID, sampling images/s and
                       tokens/s), the paper's claims with what this run says about each, the
                       exact commands, machine, date and wall times
  metrics.json         every number in the tables
  metrics_vs_keep.png  one panel per stage-1 metric against the fraction of the 16 x 16 grid kept
  reconstructions.png  the same held-out images: input row, then one row per stage-1 run
  samples.png          samples of each stage-2 model, left to right (Stackformer first)
  mask_adaptive.png    the adaptive keep-0.25 scorer's heat maps and kept regions
  reports/             the evaluation reports it read
(`step_times.json` in `--out`, from benchmarks/bench_repro_small.py, is quoted when present.)

Nothing is recomputed except the reconstruction grid (one small batch per tokenizer), so the
report can be remade at any time, including from a partly finished root (missing runs: "n/a").
`--root` and `--out` may be URLs (gs://...): everything is read and written through
`core/files.py`.
"""
import argparse
import io
import json
import math
import os
import platform
import sys

import numpy as np

from maskvq_jax.core import files
from maskvq_jax.tools import ablation_report
from maskvq_jax.tools import repro_small as pipeline

STAGE1_COLUMNS = (  # (key, header, format)
    ("tokens_per_image", "tokens / image", lambda v: f"{int(v)}"),
    ("rfid", "rFID ↓", lambda v: f"{v:.2f}"),
    ("lpips", "LPIPS ↓", lambda v: f"{v:.4f}"),
    ("psnr", "PSNR ↑", lambda v: f"{v:.2f}"),
    ("ssim", "SSIM ↑", lambda v: f"{v:.4f}"),
    ("codebook/used_fraction", "codebook usage ↑", lambda v: f"{100 * v:.1f}%"),
    ("codebook/perplexity", "perplexity ↑", lambda v: f"{v:.1f}"),
    ("train_s", "train wall s", lambda v: f"{v:.0f}"),
)
STAGE2_COLUMNS = (
    ("tokens_per_image", "tokens / image", lambda v: f"{int(v)}"),
    ("fid", "FID ↓ (vs held-out)", lambda v: f"{v:.2f}"),
    ("sampling/images_per_s", "sampling images/s ↑", lambda v: f"{v:.2f}"),
    ("sampling/tokens_per_s", "sampling tokens/s ↑", lambda v: f"{v:,.0f}"),
    ("train_s", "train wall s", lambda v: f"{v:.0f}"),
)
PLOTTED = (("rfid", "rFID ↓"), ("lpips", "LPIPS ↓"), ("psnr", "PSNR (dB) ↑"), ("ssim", "SSIM ↑"),
           ("codebook/used_fraction", "codebook usage ↑"), ("codebook/perplexity", "perplexity ↑"))
SERIES = {  # stage-1 run -> (series label, matplotlib style)
    "dense": ("dense VQGAN 16x16", "ks"), "adaptive_k0.5": ("adaptive mask (conv)", "o-"),
    "adaptive_k0.25": ("adaptive mask (conv)", "o-"), "random_k0.25": ("random mask", "x"),
    "mlp_k0.25": ("adaptive mask (MLP)", "^"), "dense_f4": ("dense VQGAN 8x8", "D")}
GRID_IMAGES = 8


def _fmt(v, f):
  return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f(v)


def _table(rows: list[dict], columns, first: str) -> str:
  head = [first] + [c[1] for c in columns]
  out = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * len(columns)) + "|"]
  for r in rows:
    out.append("| " + " | ".join([f"`{r['run']}`"] + [_fmt(r.get(k), f) for k, _, f in columns])
               + " |")
  return "\n".join(out)


def collect(root: str) -> dict:
  timings = files.read_json(files.join(root, "timings.json")) or {}
  out = {"stage1": [], "stage2": []}
  for stage, runs in (("stage1", [(n, None) for n, _ in pipeline.STAGE1]),
                      ("stage2", [(n, t) for n, t, _ in pipeline.STAGE2])):
    for name, tok in runs:
      wd = files.join(root, stage, name)
      row = {"run": name, "workdir": wd, "tokenizer_run": tok}
      if files.isdir(wd):
        try:
          row.update(ablation_report.collect(wd))
        except (ValueError, FileNotFoundError):
          pass
      row["run"] = name
      row["train_s"] = (timings.get(f"{stage}/{name}") or {}).get("wall_s")
      out[stage].append(row)
  grid = max((r.get("tokens_per_image") or 0 for r in out["stage1"]), default=0)
  for r in out["stage1"]:
    if r.get("tokens_per_image"):
      r["fraction_of_finest_grid"] = r["tokens_per_image"] / grid
  return out


def run_config(workdir: str):
  """The resolved config a trainer stored with its latest checkpoint (None if not trained)."""
  from maskvq_jax.data import runs  # pylint: disable=import-outside-toplevel
  try:
    return runs.describe(workdir).meta.get("config")
  except (FileNotFoundError, ValueError):
    return None


def budget_text(rows: dict) -> str:
  """One sentence with the shared budget, read from the trained runs' configs."""
  c1 = next((c for c in (run_config(r["workdir"]) for r in rows["stage1"]) if c), None)
  c2 = next((c for c in (run_config(r["workdir"]) for r in rows["stage2"]) if c), None)
  parts = []
  if c1:
    m, inp = c1["model"], c1["input"]
    losses = "L1 + commitment" + (" + LPIPS" if c1["loss"]["perceptual_weight"] else "") + (
        " + GAN" if c1["loss"]["disc_factor"] else "")
    parts.append(f"`{inp['name']}` ({inp['res']} px, held-out = its validation split); stage 1: "
                 f"{c1['total_steps']} steps x batch {inp['batch_size']}, codebook "
                 f"{m['codebook_size']} x {m['codebook_dim']}, ch {m['ch']}, {losses}, lr "
                 f"{c1['optim']['lr']:g}, seed {c1['seed']}, for every variant")
  if c2:
    m = c2["model"]
    parts.append(f"stage 2: {c2['total_steps']} steps x batch {c2['input']['batch_size']}, d "
                 f"{m['d_model']}, {m['n_heads']} heads, {m['code_layers']} + "
                 f"{m['position_layers']} layers (dense GPT: {m['code_layers'] + m['position_layers']}"
                 f"), dropout {m['resid_dropout']:g}, lr {c2['optim']['lr']:g}, seed {c2['seed']}")
  return "; ".join(parts) + "." if parts else "no run trained yet."


def claims(rows: dict) -> list[str]:
  """The paper's claims, each with this run's numbers and whether they agree."""
  s1 = {r["run"]: r for r in rows["stage1"]}
  s2 = {r["run"]: r for r in rows["stage2"]}
  out = []

  def compare(a, b, key, label, claim, lower_better=True):
    va, vb = s1.get(a, {}).get(key), s1.get(b, {}).get(key)
    if va is None or vb is None:
      return f"- {claim}: not measured yet ({label})."
    better = va < vb if lower_better else va > vb
    return (f"- {claim}: {label} `{a}` {va:.4g} vs `{b}` {vb:.4g} -> "
            f"**{'agrees' if better else 'does not agree'}**.")
  out.append(compare("adaptive_k0.25", "random_k0.25", "rfid", "rFID",
                     "Adaptive mask beats a random mask at the same keep ratio (paper Tab. 6)"))
  out.append("  " + compare("adaptive_k0.25", "random_k0.25", "lpips", "LPIPS",
                            "the same, by LPIPS"))
  k = tok_f4 = s1.get("dense_f4", {}).get("tokens_per_image")
  out.append(compare("adaptive_k0.25", "dense_f4", "rfid", "rFID",
                     f"At the same {int(k) if k else 'number of'} tokens per image, masking a "
                     "finer grid beats a coarser dense grid"))
  out.append(compare("adaptive_k0.5", "adaptive_k0.25", "rfid", "rFID",
                     "Keeping more regions reconstructs better (0.5 vs 0.25)"))
  a, b = s2.get("stackformer_k0.25", {}), s2.get("dense_gpt", {})
  if a.get("fid") is not None and b.get("fid") is not None:
    out.append(f"- Stage 2 on fewer tokens is as good (the paper: better): FID Stackformer "
               f"{a['fid']:.2f} vs dense GPT {b['fid']:.2f} -> "
               f"**{'agrees' if a['fid'] <= b['fid'] else 'does not agree'}**.")
  else:
    out.append("- Stage 2 on fewer tokens is as good: not measured yet (FID).")
  ia, ib = a.get("sampling/images_per_s"), b.get("sampling/images_per_s")
  if ia and ib:
    out.append(f"- Stage 2 on fewer tokens samples faster: {ia:.2f} vs {ib:.2f} images/s "
               f"({ia / ib:.2f}x) -> **{'agrees' if ia > ib else 'does not agree'}**.")
  c = s2.get("dense_gpt_f4", {})
  n = c.get("tokens_per_image") or tok_f4
  if a.get("fid") is not None and c.get("fid") is not None:
    out.append(f"- At the same {int(n) if n else 'number of'} tokens per image, the Stackformer "
               f"on the masked finer grid generates better than a raster GPT on the dense coarser "
               f"grid (the paper's stage-2 comparison): FID Stackformer {a['fid']:.2f} vs `dense_gpt_f4` "
               f"{c['fid']:.2f} -> **{'agrees' if a['fid'] < c['fid'] else 'does not agree'}**.")
  else:
    out.append("- At the same tokens per image, the Stackformer on the masked finer grid "
               "generates better than a raster GPT on the dense coarser grid: not measured yet "
               "(FID).")
  return out


def plot(rows: list[dict], path: str):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = [(k, lbl) for k, lbl in PLOTTED if any(r.get(k) is not None for r in rows)]
  if not panels:
    return None
  finest = max(r.get("tokens_per_image") or 0 for r in rows)
  cols = 3
  fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(4.2 * cols, 3.3 * -(
      -len(panels) // cols)), squeeze=False)
  for ax, (key, label) in zip(axes.flat, panels):
    seen = set()
    for series in dict.fromkeys(v[0] for v in SERIES.values()):
      pts = sorted((r["fraction_of_finest_grid"], r[key]) for r in rows
                   if SERIES.get(r["run"], ("",))[0] == series and r.get(key) is not None)
      if not pts:
        continue
      style = next(v[1] for v in SERIES.values() if v[0] == series)
      ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=series)
      seen.add(series)
    ax.set_xlabel(f"tokens / image (fraction of the finest grid, {finest})")
    ax.set_ylabel(label)
    ax.set_xlim(0.15, 1.05)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  return files.write_bytes(path, buf.getvalue())


def _upscale(a: np.ndarray, side: int = 64) -> np.ndarray:
  f = max(1, -(-side // a.shape[-2]))
  return np.repeat(np.repeat(a, f, axis=-3), f, axis=-2)


def _label(strip: np.ndarray, text: str, width: int = 120) -> np.ndarray:
  """`strip` (uint8 [H, W, 3]) with `text` written on a white margin to its left."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  margin = Image.new("RGB", (width, strip.shape[0]), (255, 255, 255))
  ImageDraw.Draw(margin).text((4, strip.shape[0] // 2 - 6), text, fill=(0, 0, 0))
  return np.concatenate([np.asarray(margin), strip], axis=1)


def reconstruction_grid(rows: list[dict], path: str):
  """Input row + one reconstruction row per trained stage-1 run, same held-out images."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import pipeline as data_pipeline  # pylint: disable=import-outside-toplevel
  from maskvq_jax.data import runs  # pylint: disable=import-outside-toplevel
  done = [r for r in rows if r.get("workdir") and files.isdir(files.join(r["workdir"],
                                                                         "checkpoints"))]
  if not done:
    return None
  loc = runs.describe(done[0]["workdir"])
  inp = loc.meta["config"]["input"]
  src = data_pipeline.tfds_source(inp["name"], "validation", data_dir=inp.get("data_dir", ""))
  idx = np.linspace(0, len(src) - 1, GRID_IMAGES).round().astype(int)
  x8 = np.stack([images_lib.decode(src[int(i)]["image"]) for i in idx])
  x = jnp.asarray(x8, jnp.float32) / 127.5 - 1.0
  out = [x8]
  for r in done:
    model, variables, _ = runs.load_tokenizer(r["workdir"])
    rec, _ = model.apply(variables, x, train=False, rngs={"mask": jax.random.key(0)})
    out.append(np.asarray(jnp.round((jnp.clip(rec, -1, 1) + 1) * 127.5)).astype(np.uint8))
  names = ["held-out input"] + [r["run"] for r in done]
  rows_img = [_label(np.concatenate(list(_upscale(a)), axis=1), n) for a, n in zip(out, names)]
  return files.save_png(path, np.concatenate(rows_img, axis=0)), names


def _title(strip: np.ndarray, text: str) -> np.ndarray:
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  im = Image.fromarray(strip)
  ImageDraw.Draw(im).text((4, 2), text, fill=(0, 0, 0))
  return np.asarray(im)


def samples_grid(rows: list[dict], path: str, per_row: int = 8, n_rows: int = 4):
  panels, names = [], []
  for r in rows:
    f = files.join(r["workdir"], "evaluation", "samples.npz")
    if not files.exists(f):
      continue
    with np.load(io.BytesIO(files.read_bytes(f))) as z:
      imgs = z["images"][:per_row * n_rows]
    imgs = _upscale(imgs)
    k = len(imgs) // per_row * per_row
    if not k:
      continue
    panel = np.concatenate([np.concatenate(list(imgs[i:i + per_row]), axis=1)
                            for i in range(0, k, per_row)], axis=0)
    title = np.full((16, panel.shape[1], 3), 255, np.uint8)
    panels.append(np.concatenate([_title(title, r["run"]), panel], axis=0))
    names.append(r["run"])
  if not panels:
    return None
  h = max(p.shape[0] for p in panels)
  panels = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]
  gap = np.full((h, 16, 3), 255, np.uint8)
  joined = [panels[0]]
  for p in panels[1:]:
    joined += [gap, p]
  return files.save_png(path, np.concatenate(joined, axis=1)), names


def machine() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  cpu = ""
  if files.exists("/proc/cpuinfo"):  # this host's
    cpu = next((line.split(":", 1)[1].strip() for line in
                files.read_text("/proc/cpuinfo").splitlines() if line.startswith("model name")), "")
  return {"cpu": cpu or platform.processor(), "cpu_count": os.cpu_count(),
          "platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}


def write(root: str, out_dir: str) -> dict:
  """Writes the report (see the module docstring); returns {"markdown": path, ...}."""
  root, out_dir = files.absolute(root), files.absolute(out_dir)
  files.makedirs(files.join(out_dir, "reports"))
  rows = collect(root)
  run_meta = files.read_json(files.join(root, "run.json")) or {}
  timings = files.read_json(files.join(root, "timings.json")) or {}
  mach = machine()
  pics = {"plot": plot(rows["stage1"], files.join(out_dir, "metrics_vs_keep.png"))}
  rec = reconstruction_grid(rows["stage1"], files.join(out_dir, "reconstructions.png"))
  smp = samples_grid(rows["stage2"], files.join(out_dir, "samples.png"))
  mask = files.join(root, "stage1", "adaptive_k0.25", "evaluation", "figures", "mask_grid.png")
  if files.exists(mask):
    files.write_bytes(files.join(out_dir, "mask_adaptive.png"), files.read_bytes(mask))
  for stage in ("stage1", "stage2"):
    for r in rows[stage]:
      for p in r.get("reports", []):
        files.write_bytes(files.join(out_dir, "reports", f"{stage}_{r['run']}.json"),
                          files.read_bytes(p))
  cmd_path = files.join(root, "commands.txt")
  commands = files.read_text(cmd_path).splitlines() if files.exists(cmd_path) else []
  commands = [c.replace(root, "$ROOT").replace(pipeline.REPO + "/", "") for c in commands]
  total = sum(v["wall_s"] for v in timings.values())
  tiny = bool(run_meta.get("tiny"))
  keep = lambda r: {k: v for k, v in r.items() if k not in ("reports", "workdir")}
  metrics = {"stage1": [keep(r) for r in rows["stage1"]],
             "stage2": [keep(r) for r in rows["stage2"]], "timings": timings,
             "total_wall_s": total, "machine": mach, "run": run_meta}
  files.write_text(files.join(out_dir, "metrics.json"),
                   json.dumps(metrics, indent=2, default=str) + "\n")

  s1 = {r["run"]: r for r in rows["stage1"]}
  tok = lambda name, d=0: int(s1.get(name, {}).get("tokens_per_image") or d)
  side = lambda n: f"{int(round(n ** 0.5))} x {int(round(n ** 0.5))}"
  s2_tok = [int(r.get("tokens_per_image") or tok(r["tokenizer_run"])) for r in rows["stage2"]]
  samplers = [((files.read_json(p) or {}).get("settings") or {}) for r in rows["stage2"]
              for p in r.get("reports", [])[-1:]]
  top = next((s for s in samplers if s.get("top_k") is not None), {})
  md = ["# Small-scale reproduction: MQ-VAE + Stackformer on emoji" + (" (TINY test size)"
                                                                     if tiny else ""), ""]
  md += ["Produced by `bash launch/repro_small.sh` (`maskvq_jax/tools/repro_small.py`, budget in "
         "`configs/repro_small.py`); every number below is read from the runs' own evaluation "
         "reports (copied to `reports/`). Budget: " + budget_text(rows)
         + (" This TINY run (REPRO_TINY=1) only shows that the pipeline works: its numbers "
            "mean nothing." if tiny else ""), ""]
  md += ["## Stage 1: tokenizers on held-out images", "",
         _table(rows["stage1"], STAGE1_COLUMNS, "run"), "",
         f"`dense`: VQGAN on the {side(tok('dense', 1))} grid (all {tok('dense')} tokens); "
         "`adaptive_k*`: MQ-VAE with the conv scorer keeping that fraction of the regions; "
         "`random_k0.25`: random scores; `mlp_k0.25`: the MLP scorer; `dense_f4`: VQGAN on a "
         f"{side(tok('dense_f4', 1))} grid, the same {tok('dense_f4')} tokens per image as keep "
         "0.25.", ""]
  if pics["plot"]:
    md += ["![metrics against the kept fraction](metrics_vs_keep.png)", ""]
  if rec:
    md += ["Reconstructions (rows: " + ", ".join(f"`{n}`" for n in rec[1]) + "):", "",
           "![reconstructions](reconstructions.png)", ""]
  if files.exists(files.join(out_dir, "mask_adaptive.png")):
    md += ["Adaptive keep-0.25 scorer (image | heat map | kept regions):", "",
           "![mask](mask_adaptive.png)", ""]
  md += [f"## Stage 2: Stackformer on {s2_tok[0]} kept tokens vs dense GPTs on "
         + " and ".join(str(n) for n in s2_tok[1:]), "",
         _table(rows["stage2"], STAGE2_COLUMNS, "run"), "",
         "`stackformer_k0.25`: Stackformer on the `adaptive_k0.25` tokens; `dense_gpt`: raster GPT "
         "(as deep as code + position layers together) on the `dense` tokens; `dense_gpt_f4`: the "
         "same GPT on the `dense_f4` tokens, as many per image as the Stackformer's. Training "
         "wall times add the resumed runs only (a killed run's time is lost) and depend on the "
         "load; compare steps, not seconds.", "",
         "FID: as many samples as held-out images, against the held-out split (small sets, so "
         "compare the rows with each other, not with published FIDs). Sampling: top-k "
         f"{top.get('top_k', 'n/a')}, top-p {top.get('top_p', 'n/a')} (Stackformer positions: "
         f"top-k {top.get('position_top_k', 'n/a')}, top-p {top.get('position_top_p', 'n/a')}), "
         "seed 0; images/s exclude the compiling first batch.", ""]
  if smp:
    md += ["Samples (left to right: " + ", ".join(f"`{n}`" for n in smp[1]) + "):", "",
           "![samples](samples.png)", ""]
  md += ["## The paper's claims against this run", ""] + claims(rows) + [""]
  md += ["## Run", "",
         f"- Started {run_meta.get('started', 'n/a')}, finished {run_meta.get('finished', 'n/a')}"
         f"; wall time of the steps {total / 60:.1f} min (summed over resumed runs; load average "
         f"at the last start {run_meta.get('load_average_at_start', 'n/a')}).",
         f"- Machine: {mach['cpu']}, {mach['cpu_count']} cores, {mach['platform']}, Python "
         f"{mach['python']}, jax {mach['jax']}, devices {', '.join(mach['devices'])}.", "",
         "| step | wall s | runs |", "|:---|---:|---:|"]
  md += [f"| {k} | {v['wall_s']:.0f} | {v['runs']} |" for k, v in timings.items()]
  est = files.read_json(files.join(out_dir, "step_times.json"))
  if est and not tiny:
    md += ["", "Estimate made before the run from measured step times "
           "(`benchmarks/bench_repro_small.py`, `step_times.json`): training "
           f"{est['training_idle_estimate_total_s'] / 60:.0f} min on 2 idle cores."]
  md += ["", "Commands (in order; `$ROOT` is the run root, paths relative to the repository):",
         "", "```bash"] + commands + ["```", ""]
  path = files.write_text(files.join(out_dir, "README.md"), "\n".join(md))
  return {"markdown": path, "metrics": files.join(out_dir, "metrics.json"), **pics,
          "reconstructions": rec[0] if rec else None, "samples": smp[0] if smp else None}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m maskvq_jax.tools.repro_report",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default="runs/repro_small")
  p.add_argument("--out", default="docs/repro_small")
  args = p.parse_args(argv)
  try:
    root = files.user_location(args.root, "--root")
    out_dir = files.user_location(args.out, "--out")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not files.isdir(root):
    print(f"error: --root {root} does not exist (run bash launch/repro_small.sh first)",
          file=sys.stderr)
    return 2
  out = write(root, out_dir)
  print(out["markdown"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
