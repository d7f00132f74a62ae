"""Every relative link in the repository's Markdown files resolves: the file
or folder exists, and a `#anchor` names a heading of the target page by
GitHub's rules (lowercase, punctuation dropped, spaces to hyphens, `-1`,
`-2`, … for repeats). README.md links every docs/ page, and CI runs the
README's test command. No JAX."""
import os
import re
import subprocess
import unicodedata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); [label]: target.
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?"
                    r"(?:\s+\"[^\"]*\")?\s*\)")
DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, mailto:, …


def markdown_files(root: str) -> list[str]:
  """The Markdown files git tracks (and new ones it does not ignore);
  without git, every .md under root outside hidden folders."""
  try:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard",
         "-z", "--", "*.md"], cwd=root, capture_output=True, check=True)
    names = [n for n in out.stdout.decode().split("\0") if n]
    return sorted(n for n in names if os.path.isfile(os.path.join(root, n)))
  except (OSError, subprocess.CalledProcessError):
    found = []
    for here, dirs, files in os.walk(root):
      dirs[:] = [d for d in dirs if not d.startswith(".")
                 and not d.endswith(".egg-info")]
      found += [os.path.relpath(os.path.join(here, f), root)
                for f in files if f.endswith(".md")]
    return sorted(found)


def _prose_lines(text: str):
  """(line number, line) outside fenced code blocks."""
  fenced = False
  for number, line in enumerate(text.split("\n"), 1):
    if FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      yield number, line


def github_anchor(heading: str) -> str:
  """The anchor GitHub gives a heading: its rendered text (code spans'
  contents, links' texts, no emphasis marks), lowercased, every character
  but letters, digits, `_`, `-` and spaces dropped, spaces to hyphens."""
  text = CODE_SPAN.sub(lambda m: m.group(2), heading)
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
  text = re.sub(r"<[^>]+>", "", text)
  text = text.replace("*", "")
  kept = "".join(c for c in text.lower()
                 if c in " -_" or unicodedata.category(c)[0] in "LNM")
  return kept.replace(" ", "-")


def anchors(text: str) -> set[str]:
  """Every anchor a page has: its headings' (repeats numbered as GitHub
  does) and explicit <a name=…> / <a id=…>."""
  found, seen = set(), {}
  for _, line in _prose_lines(text):
    found.update(HTML_ID.findall(line))
    m = HEADING.match(line)
    if not m:
      continue
    anchor = github_anchor(m.group(2))
    if anchor in seen:
      seen[anchor] += 1
      anchor = f"{anchor}-{seen[anchor]}"
    else:
      seen[anchor] = 0
    found.add(anchor)
  return found


def links(text: str):
  """(line number, target) of every link and image outside code."""
  for number, line in _prose_lines(text):
    m = DEFINITION.match(line)
    if m:
      yield number, m.group(1)
      continue
    for m in INLINE.finditer(CODE_SPAN.sub("``", line)):
      yield number, m.group(1)


def dead_links(root: str, names: list[str]) -> list[str]:
  """'FILE:LINE: TARGET (why)' for each relative link that does not resolve."""
  dead, pages = [], {}

  def page_anchors(path):
    if path not in pages:
      with open(path, encoding="utf-8") as f:
        pages[path] = anchors(f.read())
    return pages[path]

  for name in names:
    path = os.path.join(root, name)
    with open(path, encoding="utf-8") as f:
      text = f.read()
    for number, target in links(text):
      if not target or EXTERNAL.match(target) or target.startswith("//"):
        continue
      where = f"{name}:{number}: {target}"
      file_part, _, anchor = target.partition("#")
      if file_part.startswith("/"):
        dead.append(f"{where} (absolute: GitHub resolves it elsewhere)")
        continue
      resolved = (os.path.normpath(os.path.join(os.path.dirname(path),
                                                file_part))
                  if file_part else path)
      if not os.path.exists(resolved):
        dead.append(f"{where} (no such file)")
      elif anchor and resolved.endswith(".md"):
        if anchor not in page_anchors(resolved):
          dead.append(f"{where} (no such heading)")
  return dead


def test_every_relative_link_resolves():
  names = markdown_files(REPO)
  assert "README.md" in names and any(n.startswith("docs/") for n in names)
  dead = dead_links(REPO, names)
  assert not dead, "dead links:\n" + "\n".join(dead)


def test_dead_links_and_anchors_are_found(tmp_path):
  (tmp_path / "docs").mkdir()
  (tmp_path / "docs" / "page.md").write_text(
      "# A page\n\n## Symile's XOR experiment\n\n## Train step (`a/b.py`)\n"
      "\n## Train step (`a/b.py`)\n", encoding="utf-8")
  (tmp_path / "README.md").write_text(
      "[ok](docs/page.md#symiles-xor-experiment) "
      "[ok](docs/page.md#train-step-abpy-1) [ok](#a-title)\n"
      "# A title\n"
      "[dead file](docs/gone.md) [dead anchor](docs/page.md#symile-xor)\n"
      "`[in code](nowhere.md)` [web](https://example.com/x.md)\n"
      "```\n[in a fence](nowhere.md)\n```\n"
      "[ref]: docs/missing.png\n", encoding="utf-8")
  dead = dead_links(str(tmp_path), ["README.md", "docs/page.md"])
  assert dead == ["README.md:3: docs/gone.md (no such file)",
                  "README.md:3: docs/page.md#symile-xor (no such heading)",
                  "README.md:8: docs/missing.png (no such file)"]


@pytest.mark.parametrize("heading,anchor", [
    ("Symile's XOR experiment", "symiles-xor-experiment"),
    ("Every image-text objective on shapes_captions",
     "every-image-text-objective-on-shapes_captions"),
    ("Train step: JAX vs the same step in PyTorch (`bench/train_step.py`)",
     "train-step-jax-vs-the-same-step-in-pytorch-benchtrain_steppy"),
    ("At equal images seen (19,200: batch 16 × 1,200 steps … batch 128 × 150)",
     "at-equal-images-seen-19200-batch-16--1200-steps--batch-128--150"),
    ("Where to add …", "where-to-add-"),
])
def test_github_anchor_rules(heading, anchor):
  assert github_anchor(heading) == anchor


def test_readme_links_every_docs_page():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    linked = {target.partition("#")[0] for _, target in links(f.read())}
  pages = {n for n in markdown_files(REPO)
           if n.startswith("docs/") and n.count("/") == 1}
  assert pages and pages <= linked, sorted(pages - linked)


def _readme_test_command() -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    text = f.read()
  commands = re.findall(r"&& (python -m pytest [^\n]*)", text)
  assert len(commands) == 1, commands
  return commands[0]


def test_ci_runs_the_readme_test_command():
  command = _readme_test_command()
  assert "--durations=15" in command
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    runs = [line.strip() for line in f
            if line.strip().startswith("python -m pytest")]
  assert runs == [command]
