r"""Embeds images and texts with a trained checkpoint, or searches images.

  python -m cliplite_jax.embed --workdir=W --images=DIR --out=OUT
  python -m cliplite_jax.embed --workdir=W --texts=FILE --out=OUT
  python -m cliplite_jax.embed --workdir=W --images=DIR --query="a red circle"
  python -m cliplite_jax.embed --workdir=W --dataset=shapes_captions:test \
      --query="a red circle" --query="a blue square"

Images come from a folder (every image file under it, recursively;
linked folders are followed, each real folder once) or a dataset split
(`--dataset=NAME[:SPLIT]`: a TFDS name or a prepared directory; the split
defaults to the one evaluation scores), decoded as training and evaluation
decode them (data/decode.py). `--out`, a new or empty directory, gets
images.npy (float32 [N, D], unit rows) with images.txt (one name per line:
the path under the folder, or SPLIT/INDEX), texts.npy with texts.txt (the
non-empty lines of --texts), and embed.json (checkpoint, counts). Each
`--query` prints the top-k images and their cosine similarity; all queries
go into one contact sheet (`--sheet`, default OUT/queries.png or
./queries.png).
"""
from __future__ import annotations

import json
import os
import re
import sys

if __name__ == "__main__":
  from cliplite_jax.training import native_logs
  native_logs.quiet()

import numpy as np
from absl import app, flags

from cliplite_jax import cli, config_io, inference, progress

from cliplite_jax.data import augment, sources, text as text_lib
from cliplite_jax.probes import plots

FLAGS = flags.FLAGS
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif",
                  ".tiff")


def list_images(root: str) -> list[str]:
  """Image files under `root` (by suffix, hidden entries skipped), sorted,
  as paths relative to `root`.

  Symbolic links are followed, but each real directory is visited once
  (by device and inode): a link back up the tree, a loop, adds nothing, and
  a folder reached both directly and through a link is listed under its
  direct path (links are followed after the tree itself).
  """
  names, seen = [], set()
  direct, linked = [(root, "")], []
  while direct or linked:
    directory, relative = direct.pop() if direct else linked.pop(0)
    try:
      status = os.stat(directory)
      if (status.st_dev, status.st_ino) in seen:
        continue
      seen.add((status.st_dev, status.st_ino))
      entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:  # unreadable or vanished: skipped, as os.walk does
      continue
    for entry in entries:
      if entry.name.startswith("."):
        continue
      path = os.path.join(relative, entry.name)
      try:
        if entry.is_dir():
          (linked if entry.is_symlink() else direct).append(
              (entry.path, path))
        elif entry.name.lower().endswith(IMAGE_SUFFIXES):
          names.append(path)  # a broken link too: counted as unreadable
      except OSError:  # e.g. a link we may not follow
        continue
  return sorted(names)


def read_texts(path: str) -> list[str]:
  """The non-empty lines of a UTF-8 text file, stripped."""
  try:
    with open(path, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise config_io.UserError(f"--texts {path}: {e}") from e


def folder_images(root: str) -> list[str]:
  """`list_images(root)`, or a UserError when it finds none."""
  names = list_images(root)
  if not names:
    raise config_io.UserError(f"--images {root}: no image files "
                              f"({', '.join(IMAGE_SUFFIXES)})")
  return names


def embed_folder(model: inference.Model, root: str,
                 names: list[str] | None = None
                 ) -> tuple[np.ndarray, list[str]]:
  """Every readable image under `root` (or its listed `names`) → (float32
  [N, D] unit rows, their relative paths). Unreadable files are skipped
  and counted on stderr."""
  names = folder_images(root) if names is None else names
  meter = progress.Progress("images", len(names))
  parts, kept = [], []
  for start, (positions, batch) in zip(
      range(0, len(names), model.batch_size), inference.image_batches(
          [os.path.join(root, n) for n in names], model.image_size,
          model.batch_size, skip_unreadable=True)):
    if len(batch):
      parts.append(model.encode_image_batch(batch)["embeddings"])
      kept += positions.tolist()
    meter.add(min(model.batch_size, len(names) - start))
  skipped = sorted(set(range(len(names))) - set(kept))
  if skipped:
    shown = ", ".join(names[i] for i in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    print(f"images: skipped {len(skipped)} unreadable file(s) of "
          f"{len(names)}: {shown}{more}", file=sys.stderr)
  if not kept:
    raise config_io.UserError(f"--images {root}: no readable image")
  return np.concatenate(parts), [names[i] for i in kept]


def parse_dataset(spec: str) -> tuple[str, str]:
  """"NAME[:SPLIT]" → (canonical name, split or ""); the colon of a URL's
  "://" does not count."""
  match = re.search(r":(?!//)", spec)
  name, split = (spec, "") if match is None else (
      spec[:match.start()], spec[match.end():])
  return sources.canonical(name), split


def embed_dataset(model: inference.Model, spec: str
                  ) -> tuple[np.ndarray, list[str], list[str]]:
  """NAME[:SPLIT] → (float32 [N, D] unit rows, names "SPLIT/INDEX", each
  image's first caption or "")."""
  name, split = parse_dataset(spec)
  try:
    source, _ = sources.get(name)
    split = split or (model.config.eval.split
                      if name == model.config.data.name else source.eval_split)
    examples = sources.open_split(name, split, model.config.data.data_dir)
  except ValueError as e:  # unknown name or split; not prepared
    raise config_io.UserError(f"--dataset {spec}: {e}") from e
  out = model.encode_split(name, split)
  captions = [sources.decode_captions(source, examples[int(i)])
              for i in out["index"]]
  return (out["embeddings"], [f"{split}/{i}" for i in out["index"]],
          [text_lib.clean_caption(c[0]) if c else "" for c in captions])


def dataset_pictures(model, spec: str, names: list[str], size: int
                     ) -> list[np.ndarray]:
  """The images "SPLIT/INDEX" of dataset NAME[:SPLIT], centre-cropped to
  uint8 [size, size, 3]."""
  name, _ = parse_dataset(spec)
  source, _ = sources.get(name)
  splits, pictures = {}, []
  for entry in names:
    split, _, index = entry.rpartition("/")
    if split not in splits:
      splits[split] = sources.open_split(name, split,
                                         model.config.data.data_dir)
    image, _ = sources.decode(source, splits[split][int(index)])
    pictures.append(augment.center_crop_resize(image, size))
  return pictures


def search(model: inference.Model, image_emb: np.ndarray, names: list[str],
           captions: list[str] | None, queries: list[str], top_k: int
           ) -> list[list[tuple[int, float]]]:
  """Prints, for each query, its top-k images (rank, cosine, name and the
  image's caption where known); returns [(row, cosine)] per query."""
  scores = model.similarity(image_emb, model.encode_texts(queries)).T
  ranked = []
  for query, row in zip(queries, scores):
    top = np.argsort(-row, kind="stable")[:top_k]
    ranked.append([(int(i), float(row[i])) for i in top])
    print(f"“{query}”")
    for rank, i in enumerate(top, 1):
      caption = f"  ({captions[i]})" if captions and captions[i] else ""
      print(f"  {rank}. {row[i]:.3f}  {names[i]}{caption}")
  return ranked


def check_flags() -> None:
  """UserError for a combination of flags that cannot run, before the
  checkpoint is restored (so nothing is written)."""
  if FLAGS.images and FLAGS.dataset:
    raise config_io.UserError("give --images or --dataset, not both")
  if not (FLAGS.images or FLAGS.dataset or FLAGS.texts):
    raise config_io.UserError("nothing to embed: give --images=DIR, "
                              "--dataset=NAME[:SPLIT] or --texts=FILE")
  if FLAGS.query and not (FLAGS.images or FLAGS.dataset):
    raise config_io.UserError("--query searches images: give --images or "
                              "--dataset")
  if not FLAGS.query and not FLAGS.out:
    raise config_io.UserError("give --out=DIR for the embeddings (or "
                              "--query to search)")
  if FLAGS.images and not os.path.isdir(FLAGS.images):
    raise config_io.UserError(f"--images {FLAGS.images}: not a directory")
  if FLAGS.texts and not os.path.isfile(FLAGS.texts):
    raise config_io.UserError(f"--texts {FLAGS.texts}: no such file")
  if FLAGS.top_k < 1:
    raise config_io.UserError("--top_k must be at least 1")
  if FLAGS.batch_size is not None and FLAGS.batch_size < 1:
    raise config_io.UserError("--batch_size must be at least 1")
  for query in FLAGS.query:
    # Cleaned as captions are: "!!!" is as empty as "".
    if not text_lib.clean_caption(query, max_words=len(query) + 1):
      raise config_io.UserError(f"--query {query!r} has no words; give the "
                                f"text to search for, e.g. "
                                f"--query='a red circle'")
  if FLAGS.out is not None:
    # A new directory only: files beside another model's would mix them.
    inference.check_out(FLAGS.out)
  if FLAGS.sheet is not None:
    _check_sheet(FLAGS.sheet)


def _check_sheet(sheet: str) -> None:
  """UserError unless the --sheet PNG can be written (replacing a file of
  that name is fine; a directory is not)."""
  if not sheet.strip() or os.path.isdir(sheet):
    raise config_io.UserError(f"--sheet {sheet!r}: name a .png file")
  if not os.path.lexists(sheet):
    inference.check_creatable(sheet, "--sheet")
  elif not os.access(sheet, os.W_OK):
    raise config_io.UserError(f"--sheet {sheet} is not writable")


def run() -> None:
  check_flags()
  texts = read_texts(FLAGS.texts) if FLAGS.texts else None
  if texts is not None and not texts:
    raise config_io.UserError(f"--texts {FLAGS.texts}: no non-empty line")
  listed = folder_images(FLAGS.images) if FLAGS.images else None
  model = inference.load(FLAGS.workdir, FLAGS.step, FLAGS.batch_size)
  print(f"checkpoint {model.workdir} step {model.step}: embeddings of "
        f"width {model.embed_dim}, images at {model.image_size} px",
        file=sys.stderr)
  image_emb = names = captions = text_emb = None
  if FLAGS.images:
    image_emb, names = embed_folder(model, FLAGS.images, listed)
  elif FLAGS.dataset:
    image_emb, names, captions = embed_dataset(model, FLAGS.dataset)
  if texts is not None:
    text_emb = model.encode_texts(texts)
  # Written only once everything is embedded: an error above leaves no
  # partial output.
  out, written = FLAGS.out, []
  if out:
    os.makedirs(out, exist_ok=True)
    if image_emb is not None:
      written += _save(out, "images", image_emb, names)
    if text_emb is not None:
      written += _save(out, "texts", text_emb, texts)
    with open(os.path.join(out, "embed.json"), "w") as f:
      json.dump({"workdir": model.workdir, "step": model.step,
                 "embed_dim": model.embed_dim,
                 "images": FLAGS.images or FLAGS.dataset,
                 "num_images": None if names is None else len(names),
                 "num_texts": None if texts is None else len(texts)}, f,
                indent=1)
    written.append(os.path.join(out, "embed.json"))
  if FLAGS.query:
    ranked = search(model, image_emb, names, captions, FLAGS.query,
                    FLAGS.top_k)
    sheet = FLAGS.sheet or os.path.join(out or ".", "queries.png")
    _contact_sheet(model, sheet, ranked, names, captions)
    written.append(sheet)
  for path in written:
    print(f"wrote {path}")


def _save(out: str, what: str, embeddings: np.ndarray,
          names: list[str]) -> list[str]:
  paths = [os.path.join(out, f"{what}.npy"), os.path.join(out, f"{what}.txt")]
  np.save(paths[0], embeddings.astype(np.float32))
  with open(paths[1], "w", encoding="utf-8") as f:
    f.writelines(f"{' '.join(n.splitlines())}\n" for n in names)
  return paths


def _contact_sheet(model, path: str, ranked, names, captions) -> None:
  size = max(model.image_size, 128)
  rows = [[names[i] for i, _ in top] for top in ranked]
  if FLAGS.images:
    pictures = [[augment.center_crop_resize(
        inference.read_image(os.path.join(FLAGS.images, n)), size)
                 for n in row] for row in rows]
  else:
    pictures = [dataset_pictures(model, FLAGS.dataset, row, size)
                for row in rows]
  labels = [[f"{score:.2f} {captions[i] if captions else names[i]}"
             for i, score in top] for top in ranked]
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  plots.gallery_png(path, FLAGS.query, pictures, None,
                    f"{model.workdir} step {model.step}: query → top-"
                    f"{FLAGS.top_k} images", labels)


def main(argv):
  cli.run("cliplite_jax.embed", argv, run,
          (sources.DatasetNotPreparedError, OSError),
          interrupted=lambda e: sys.exit(
              "\ncliplite_jax.embed: interrupted; nothing more written"))


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training directory.")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_string("images", None, "A folder of images (recursive).")
  flags.DEFINE_string("dataset", None,
                      "NAME[:SPLIT]: a dataset split's images instead.")
  flags.DEFINE_string("texts", None, "A text file: one text per line.")
  flags.DEFINE_string("out", None, "Directory for the .npy and index files.")
  flags.DEFINE_multi_string("query", [], "A text query (repeatable).")
  flags.DEFINE_integer("top_k", 5, "Images shown per query.")
  flags.DEFINE_string("sheet", None, "Contact sheet PNG (default "
                      "OUT/queries.png, or ./queries.png without --out).")
  flags.DEFINE_integer("batch_size", None,
                       "Images or texts per step (default: eval.batch_size).")
  flags.mark_flag_as_required("workdir")
  app.run(main)
