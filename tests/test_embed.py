"""The embed command's folder walk and its refusals of bad input: one line
on stderr naming the problem and the fix, exit status 1, nothing written,
and no checkpoint restored."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cliplite_jax import embed
from conftest import run_module


def _png(path) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)


def test_each_real_folder_is_listed_once_and_links_are_followed(tmp_path):
  root, outside = tmp_path / "photos", tmp_path / "elsewhere"
  _png(root / "a.png")
  _png(root / "real" / "b.png")
  os.symlink("..", root / "real" / "up")  # a loop back to the root
  assert embed.list_images(str(root)) == ["a.png", "real/b.png"]

  _png(outside / "c.png")
  _png(outside / "d.png")
  os.symlink(root / "real", root / "again")    # the tree's own folder
  os.symlink(outside, root / "linked")         # a folder outside it
  os.symlink(outside / "d.png", root / "d_link.png")  # a linked file
  os.symlink(root / "missing.png", root / "broken.png")
  os.symlink(root, outside / "back")  # a loop through two folders
  assert embed.list_images(str(root)) == [
      "a.png", "broken.png", "d_link.png", "linked/c.png", "linked/d.png",
      "real/b.png"]


def _refused(result, message: str) -> None:
  assert result.returncode == 1, result.stderr[-2000:]
  line, = result.stderr.strip().splitlines()
  assert line == f"cliplite_jax.embed: error: {message}", line


@pytest.fixture
def unrestorable(eight_step_run, tmp_path):
  """A workdir with the trained run's config and tokenizer but no
  checkpoint: a command that got as far as restoring would fail with "no
  checkpoint", so any other error shows it stopped before."""
  workdir = tmp_path / "no_checkpoints"
  shutil.copytree(eight_step_run, workdir,
                  ignore=shutil.ignore_patterns("checkpoints"))
  return str(workdir)


def test_a_used_out_is_refused_before_the_model_loads(unrestorable,
                                                      tmp_path):
  texts = tmp_path / "texts.txt"
  texts.write_text("a red circle\n")
  out = tmp_path / "out"
  out.mkdir()
  (out / "images.npy").write_bytes(b"another model's embeddings")
  result = run_module("cliplite_jax.embed", f"--workdir={unrestorable}",
                      f"--texts={texts}", f"--out={out}", devices=1)
  _refused(result, f"--out {out} exists and is not an empty directory; "
           f"name a new one")
  assert os.listdir(out) == ["images.npy"]
  assert (out / "images.npy").read_bytes() == b"another model's embeddings"

  result = run_module("cliplite_jax.embed", f"--workdir={unrestorable}",
                      f"--texts={texts}", f"--out={texts}/sub", devices=1)
  _refused(result, f"--out {texts}/sub: {texts} is a file, not a directory; "
           f"name a path in a directory")


def test_an_empty_query_is_refused(unrestorable, tmp_path):
  photos = tmp_path / "photos"
  _png(photos / "a.png")
  for query in ("", "   ", "!!!"):
    result = run_module("cliplite_jax.embed", f"--workdir={unrestorable}",
                        f"--images={photos}", "--query=a red circle",
                        f"--query={query}", f"--out={tmp_path / 'out'}",
                        devices=1)
    _refused(result, f"--query {query!r} has no words; give the text to "
             f"search for, e.g. --query='a red circle'")
  assert not (tmp_path / "out").exists()


def test_a_folder_that_is_no_workdir_gets_advice_embed_can_follow(tmp_path):
  texts = tmp_path / "texts.txt"
  texts.write_text("a red circle\n")
  result = run_module("cliplite_jax.embed", f"--workdir={tmp_path}",
                      f"--texts={texts}", f"--out={tmp_path / 'out'}",
                      devices=1)
  _refused(result, f"{tmp_path} is not a training workdir (it has no "
           f"config.json): name a directory that python -m cliplite_jax.main "
           f"trained into")
  assert not (tmp_path / "out").exists()
