r"""Mask-ratio ablation report: one Markdown table row and one plot point per run.

  python -m maskvq_jax.tools.ablation_report --workdirs $ROOT/keep_0.1 $ROOT/keep_0.3 ... \
      [--output ablation.md] [--plot ablation.png] [--title "FFHQ 256, f8"]

Why: the paper's central ablation is quality vs. the fraction of regions kept. Each run directory
is evaluated once with `python -m maskvq_jax.evaluate` (which writes
`<dir>/evaluation/report.json`); this tool only collects those reports, so re-making the table
or the plot costs nothing. Per workdir it reads `evaluation/report.json` in the directory itself
and in its immediate subdirectories (e.g. a stage-2 run in `keep_0.3/stage2/`), and merges them:
tokenizer metrics (rFID, PSNR, codebook usage) from stage-1/tokenizer reports, FID and sampling
tokens/s from stage-2/sample reports; when two reports give the same metric the newer wins.
A workdir without any report still gets a row (keep ratio and tokens per image from its
checkpoint config) with "n/a" metrics, and a warning names the evaluate command to run.

Columns: keep ratio, tokens per image, rFID, PSNR, codebook usage (used fraction), FID (when any
run was sampled), sampling tokens/s (when measured). The PNG (matplotlib, Agg) has one panel per
metric against the keep ratio.
"""
import argparse
import io
import math
import sys
from typing import Optional


from maskvq_jax.core import cli
from maskvq_jax.core import files
from maskvq_jax.evaluation import report as report_lib

REPORT_NAME = "evaluation/report.json"
COLUMNS = (  # (metric key, header, formatter, always shown)
    ("keep_ratio", "keep ratio", lambda v: f"{v:.3g}", True),
    ("tokens_per_image", "tokens / image", lambda v: f"{int(v)}", True),
    ("rfid", "rFID ↓", lambda v: f"{v:.2f}", True),
    ("psnr", "PSNR ↑", lambda v: f"{v:.2f}", True),
    ("codebook/used_fraction", "codebook usage ↑", lambda v: f"{100 * v:.1f}%", True),
    ("fid", "FID ↓", lambda v: f"{v:.2f}", False),
    ("sampling/tokens_per_s", "sampling tokens/s ↑", lambda v: f"{v:,.0f}", False),
)
PLOTTED = (("rfid", "rFID"), ("psnr", "PSNR (dB)"), ("codebook/used_fraction", "codebook usage"),
           ("fid", "FID"), ("sampling/tokens_per_s", "sampling tokens/s"))


def find_reports(workdir: str) -> list[str]:
  """`evaluation/report.json` files in `workdir` and its immediate subdirectories."""
  return sorted(files.glob(workdir, REPORT_NAME) + files.glob(workdir, f"*/{REPORT_NAME}"))


def _config_row(workdir: str) -> dict:
  """Keep ratio and tokens per image from a workdir's checkpoint meta (no weights read)."""
  from maskvq_jax.data import runs as checkpoints  # pylint: disable=import-outside-toplevel
  from maskvq_jax.models import mqvae  # pylint: disable=import-outside-toplevel
  loc = checkpoints.describe(workdir)
  model = (loc.meta.get("config") or {}).get("model") or loc.meta.get("model")
  if not model:
    raise ValueError(f"{workdir}: no model config in its checkpoint meta")
  if "resolution" not in model or "ch_mult" not in model:  # e.g. a stage-2 run still training
    raise ValueError(f"{workdir}: not a tokenizer run (no resolution / ch_mult in its model config)")
  dense = bool(model.get("dense", False))
  grid = model["resolution"] // 2 ** (len(model["ch_mult"]) - 1)
  keep = 1.0 if dense else float(model["keep_ratio"])
  tokens = grid * grid if dense else mqvae.num_kept(keep, model["resolution"], model["ch_mult"])
  return {"keep_ratio": keep, "tokens_per_image": tokens}


def collect(workdir: str) -> dict:
  """One table row: {"workdir", "keep_ratio", "tokens_per_image", metrics..., "reports": [...]}."""
  row: dict = {"workdir": workdir, "reports": []}
  reports = []
  for path in find_reports(workdir):
    rep = report_lib.read(path)
    reports.append((rep.get("created") or "", path, rep))
  for _, path, rep in sorted(reports, key=lambda r: r[0]):  # oldest first: newer overwrite
    row["reports"].append(path)
    tok = rep.get("tokenizer") or {}
    for k in ("keep_ratio", "tokens_per_image"):
      if tok.get(k) is not None:
        if k in row and not math.isclose(row[k], tok[k]):
          raise ValueError(f"{workdir}: reports disagree on {k} ({row[k]} vs {tok[k]} in {path})")
        row[k] = tok[k]
    row.update({k: v for k, v in rep["metrics"].items() if v is not None})
  if "keep_ratio" not in row:
    try:
      row.update(_config_row(workdir))
    except (FileNotFoundError, ValueError) as e:
      raise ValueError(f"{workdir}: no evaluation report and no readable checkpoint ({e})") from e
  return row


def markdown(rows: list[dict], title: Optional[str] = None) -> str:
  cols = [c for c in COLUMNS if c[3] or any(r.get(c[0]) is not None for r in rows)]
  head = ["run"] + [c[1] for c in cols]
  lines = ([f"### {title}", ""] if title else []) + [
      "| " + " | ".join(head) + " |",
      "|" + "|".join([":---"] + ["---:"] * len(cols)) + "|"]
  for r in rows:
    cells = [files.basename(r["workdir"])]
    for key, _, fmt, _ in cols:
      v = r.get(key)
      cells.append("n/a" if v is None or (isinstance(v, float) and not math.isfinite(v))
                   else fmt(v))
    lines.append("| " + " | ".join(cells) + " |")
  missing = [r["workdir"] for r in rows if not r["reports"]]
  if missing:
    lines += ["", "Not evaluated yet: " + ", ".join(missing) + "."]
  return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: Optional[str] = None) -> Optional[str]:
  """One panel per metric present in any row, x = keep ratio. Returns the path (None if empty)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  panels = [(k, label) for k, label in PLOTTED if any(r.get(k) is not None for r in rows)]
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
  keeps = [r["keep_ratio"] for r in rows]
  pad = max(0.05, 0.08 * (max(keeps) - min(keeps)))
  for ax, (key, label) in zip(axes[0], panels):
    pts = sorted((r["keep_ratio"], r[key]) for r in rows if r.get(key) is not None)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    ax.plot(xs, ys, "o-")
    for r in rows:
      if r.get(key) is not None:
        ax.annotate(str(r.get("tokens_per_image", "")), (r["keep_ratio"], r[key]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlim(min(keeps) - pad, max(keeps) + pad)  # same x range in every panel
    ax.set_xlabel("keep ratio (labels: tokens / image)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  return files.write_bytes(path, buf.getvalue())


@cli.entry_point
def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m maskvq_jax.tools.ablation_report",
                         description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdirs", nargs="+", required=True, help="one directory per keep ratio")
  p.add_argument("--output", default="ablation.md", help="Markdown file (default %(default)s)")
  p.add_argument("--plot", default=None, help="PNG plot (default: --output with .png)")
  p.add_argument("--title", default=None)
  args = p.parse_args(argv)
  with cli.user_input():  # the workdirs and reports the user named
    rows = sorted((collect(w) for w in args.workdirs), key=lambda r: r["keep_ratio"])
  for r in rows:
    if not r["reports"]:
      print(f"warning: {r['workdir']} has no {REPORT_NAME}; run python -m maskvq_jax.evaluate "
            f"--workdir {r['workdir']}", file=sys.stderr)
  text = markdown(rows, args.title)
  table_path = files.write_text(args.output, text)
  png = plot(rows, args.plot or files.with_suffix(args.output, ".png"), args.title)
  print(text, end="")
  print(f"table: {table_path}\nplot: {png or 'none (no metrics yet)'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
