r"""Exports a trained text tower as a Hugging Face `BertModel` directory.

  python -m cliplite_jax.export_text --workdir=WORKDIR --out=DIR [--step=N]

Writes DIR/config.json, DIR/model.safetensors and the run's tokenizer
(tokenizer.json, vocab.txt), which `transformers.BertModel.from_pretrained`
and `cliplite_jax.models.text.load_pretrained` both read.
"""
from __future__ import annotations

import jax
from absl import app, flags

from cliplite_jax import cli, config_io, inference, run_dir
from cliplite_jax.models import cliplite, towers

FLAGS = flags.FLAGS


def export(workdir: str, out: str, step: int | None = None) -> int:
  """Restores `step` (latest if None) of WORKDIR and writes its text tower
  to `out`; returns the step exported."""
  config = run_dir.saved_config(workdir)
  try:
    row = towers.check_export(config.model.text, "text")
  except ValueError as e:
    raise config_io.UserError(str(e)) from e
  step, model, variables, tokenizer, _ = run_dir.restore(workdir, config,
                                                          step)
  params = jax.device_get(variables["params"][cliplite.TEXT_TOWER])
  if jax.process_index() == 0:
    row.hf_export(model.text_encoder, params, out, tokenizer)
  return step


def main(argv):
  def body():
    workdir = config_io.existing_workdir(FLAGS.workdir)
    inference.check_out(FLAGS.out)  # before the slow restore
    step = export(workdir, FLAGS.out, FLAGS.step)
    print(f"wrote the text tower of step {step} to {FLAGS.out}")
  cli.run("cliplite_jax.export_text", argv, body, (OSError,))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training directory.")
  flags.DEFINE_string("out", None, "New directory for the HF checkpoint.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
