"""The table of bench/gpu_check.sh: one row per line of a `bench/train_step.py
--json` file.

  python bench/gpu_report.py OUT/results.jsonl > OUT/summary.md
"""
from __future__ import annotations

import json
import sys


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
  """A Markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def table(records: list[dict]) -> str:
  """A Markdown table: what ran, JAX's step, MFU, the fastest PyTorch
  variant and JAX / PyTorch speed (> 1: JAX faster)."""
  rows = []
  for r in records:
    overrides = dict(item.partition("=")[::2] for item in r["set"])  # last wins
    settings = " ".join([f"{k}={v}" for k, v in overrides.items()]
                        + ([f"XLA_FLAGS={r['xla_flags']}"]
                           if r["xla_flags"] else []))
    torch_ms = (r["torch_ms"][r["torch_fastest"]] if r.get("torch_fastest")
                else None)
    rows.append([f"{r['preset']} {r['part']}", settings or "(preset)",
                 str(r["batch"]), f"{r['jax_ms']:.1f}",
                 f"{r['jax_images_per_s']:,.0f}", f"{r['compile_s']:.0f}",
                 f"{r['gflop_per_device']:,.1f}",
                 # The lowered program's FLOPs count what remat recomputes.
                 _fmt(r["mfu"], ".3f") + (" (with recompute)" if r["mfu"]
                     and overrides.get("model.remat") == "True" else ""),
                 (f"{torch_ms:.1f} ({r['torch_fastest']})"
                  if torch_ms is not None else ""),
                 _fmt(r.get("jax_over_torch"), ".2f")])
  device = records[0]["device"] if records else "(no runs)"
  return (f"{device}\n\n" + markdown_table(
      ["run", "settings", "batch", "JAX ms", "JAX images/s", "compile s",
       "GFLOP/step", "MFU", "PyTorch ms (fastest)", "JAX / PyTorch"], rows))


def main() -> None:
  if len(sys.argv) != 2:
    sys.exit(__doc__.strip())
  try:
    with open(sys.argv[1]) as f:
      records = [json.loads(line) for line in f if line.strip()]
  except (OSError, json.JSONDecodeError) as e:
    sys.exit(f"gpu_report: cannot read {sys.argv[1]}: {e}")
  print(table(records))


if __name__ == "__main__":
  main()
