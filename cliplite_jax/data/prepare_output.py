"""prepare's --out directory: made, locked against a second prepare, and
checked to be new, empty, this very preparation, or its unfinished run."""
from __future__ import annotations

import json

from etils import epath

from cliplite_jax.data import prepared
from cliplite_jax.data.prepare_options import PrepareError, differences
from cliplite_jax.file_lock import FileLock

# Held by a running prepare on a local --out; gone once it ends.
LOCK_FILE = ".prepare.lock"


def create_out(root: epath.Path) -> bool:
  """Makes --out (and its parents) unless it exists; True when this call
  made it. PrepareError when it is a file, lies under a file, or cannot be
  made."""
  out = str(root)
  if root.exists():
    if not root.is_dir():
      raise PrepareError(f"--out {out} is a file; choose a directory")
    return False
  try:
    root.mkdir(parents=True)
  except FileExistsError:
    if root.is_dir():  # made a moment ago by another prepare: its lock says
      return False
    raise PrepareError(f"--out {out} lies under a file; choose a directory "
                       f"path") from None
  except NotADirectoryError:
    raise PrepareError(f"--out {out} lies under a file; choose a directory "
                       f"path") from None
  except OSError as e:
    raise PrepareError(f"--out {out} cannot be made ({e.strerror or e}); "
                       f"choose a writable directory") from None
  return True


def lock_out(root: epath.Path) -> FileLock | None:
  """Holds ROOT/.prepare.lock while this prepare runs (local --out only):
  two prepares on one --out would write the same units."""
  if "://" in str(root):
    return None
  lock = FileLock(str(root / LOCK_FILE), remove_on_release=lambda: True)
  try:
    who = lock.try_acquire()
  except OSError as e:
    raise PrepareError(f"--out {root} is not writable ({e.strerror or e}); "
                       f"choose a writable directory") from None
  if who is not None:
    raise PrepareError(f"{root} is being prepared by another prepare ({who}); "
                       f"wait for it to finish or stop it")
  return lock


def check_out(root: epath.Path, spec: dict) -> dict | None:
  """The finished card when `root` holds this very preparation; None when
  it is new or an unfinished one to continue (one with other flags and no
  unit done is started over). PrepareError for anything else."""
  out, work = str(root), root / ".work"
  card = None
  if (root / prepared.CARD).exists():
    try:
      card = prepared.read_card(out)
    except ValueError:
      if not (work / "spec.json").exists():
        raise
      # Cut short while written (by an older version): the unit markers
      # are all there, so the rerun writes it again.
      (root / prepared.CARD).unlink()
  if card is not None:
    if card.get("spec") != spec:
      raise PrepareError(
          f"{out} already holds a prepared dataset made with other flags "
          f"({differences(card.get('spec', {}), spec)}); choose a new --out")
    return card
  spec_file = work / "spec.json"
  if work.exists() and not spec_file.exists():
    # A run killed before it wrote its spec left at most its row buckets
    # and staging; anything else there is not ours to delete.
    if not {p.name for p in work.iterdir()} <= {"rows", "staging"}:
      raise PrepareError(f"--out {out} exists and holds other files; choose "
                         f"a new or an empty directory")
    work.rmtree()
  if spec_file.exists():
    saved = json.loads(spec_file.read_text())
    if saved != spec:
      if any(work.glob("unit-*.json")):
        raise PrepareError(
            f"{out} holds an unfinished preparation made with other flags or "
            f"an older version of its sources ({differences(saved, spec)}): "
            f"rerun that command to finish it, or delete {work} to start "
            f"over with these flags")
      work.rmtree()
  elif any(p.name not in (LOCK_FILE, prepared.CARD + ".partial")
           for p in root.iterdir()):
    raise PrepareError(f"--out {out} exists and holds other files; choose a "
                       f"new or an empty directory")
  return None


def finished_card(root: epath.Path, spec: dict) -> dict | None:
  """The card of a finished preparation of this very spec at `root`, read
  without writing anything (None otherwise, a damaged card included)."""
  try:
    card = prepared.read_card(str(root))
  except (FileNotFoundError, NotADirectoryError, ValueError):
    return None
  return card if card.get("spec") == spec else None
