"""Where the export commands (and embed) may write: `inference.check_out`,
the one check they share, made before any checkpoint is restored."""
import os

import pytest

from cliplite_jax import config_io, export_image, inference
from conftest import run_module
from test_embed import unrestorable  # noqa: F401 (a fixture)


def _refused(result, program: str, message: str) -> None:
  assert result.returncode == 1, result.stderr[-2000:]
  line, = result.stderr.strip().splitlines()
  assert line == f"{program}: error: {message}", line


@pytest.mark.parametrize("program", ["cliplite_jax.export_text",
                                     "cliplite_jax.export_image"])
def test_a_bad_out_is_one_line_before_anything_is_restored(
    unrestorable, tmp_path, program):  # noqa: F811
  # `unrestorable` has no checkpoint: restoring would fail differently.
  a_file = tmp_path / "notes.txt"
  a_file.write_text("keep me\n")
  used = tmp_path / "used"
  used.mkdir()
  (used / "config.json").write_text("{}")
  for out, message in (
      (a_file, f"--out {a_file} exists and is not an empty directory; name "
               f"a new one"),
      (used, f"--out {used} exists and is not an empty directory; name a "
             f"new one"),
      (f"{a_file}/tower", f"--out {a_file}/tower: {a_file} is a file, not a "
                          f"directory; name a path in a directory"),
      ("", "--out is empty; name a new directory")):
    result = run_module(program, f"--workdir={unrestorable}", f"--out={out}",
                        devices=1)
    _refused(result, program, message)
  assert a_file.read_text() == "keep me\n"
  assert os.listdir(used) == ["config.json"]
  assert sorted(os.listdir(tmp_path)) == ["no_checkpoints", "notes.txt",
                                          "used"]


def test_an_unwritable_place_is_refused(tmp_path, monkeypatch):
  empty = tmp_path / "empty"
  empty.mkdir()
  inference.check_out(str(empty))                # an empty folder is fine
  inference.check_out(str(tmp_path / "a" / "b"))  # and so are new ones
  assert export_image.check_out is inference.check_out
  # Permission bits do not tell /proc: the check tries to make a folder.
  with pytest.raises(config_io.UserError, match="/proc is not writable"):
    inference.check_out("/proc/cliplite_out")
  # Root may write anywhere else, so the test says what the OS would.
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(inference.tempfile, "mkdtemp", refuse)
  with pytest.raises(config_io.UserError) as raised:
    inference.check_out(str(tmp_path / "a" / "b"))
  assert str(raised.value) == (f"--out {tmp_path}/a/b: {tmp_path} is not "
                               f"writable; name a path elsewhere")
  with pytest.raises(config_io.UserError, match="is not writable"):
    inference.check_out(str(empty))
  assert not (tmp_path / "a").exists()


def test_a_remote_out_is_refused_not_written_locally(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(config_io.UserError, match="local directory"):
    inference.check_out("gs://bucket/model")
  assert not os.path.exists(tmp_path / "gs:")
