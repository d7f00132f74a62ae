"""The figures README.md, docs/ and RESULTS.md cite from the results files
under experiments/ equal what those files hold: every "mean ± std" cell of
the result tables recomputed from the per-run values (mean, sample std with
ddof 1, rounded to 3 decimals as printed), each JSON's stored summary equal
to its runs, and every "m ± s" anywhere in those documents (and
BENCHMARKS.md) one of the JSONs' cells. The tables are parsed from the
Markdown, so an edited figure, or a rerun that changes a JSON without its
table, fails here. No JAX."""
import json
import math
import os
import re
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "experiments"))

import experiments  # noqa: E402
import objectives_shapes  # noqa: E402
import small_batch  # noqa: E402
import symile_xor  # noqa: E402

STUDIES = ("batch", "images", "fraction", "steps")
# The documents that cite results, and the pages their tables are on.
OBJECTIVES_PAGE = "docs/objectives.md"  # every objective; Symile's XOR
LACLIP_PAGE = "docs/data.md"
CITING = ("README.md", "RESULTS.md", OBJECTIVES_PAGE, LACLIP_PAGE)
PLUS_MINUS = re.compile(r"(\d+\.\d{3}) ± (\d+\.\d{3})")


def _text(name: str) -> str:
  with open(os.path.join(REPO, name), encoding="utf-8") as f:
    return f.read()


def _json(name: str):
  with open(os.path.join(REPO, name)) as f:
    return json.load(f)


def _tables(text: str) -> list[tuple[int, list[str], list[list[str]]]]:
  """Every Markdown table: (offset of its first line, header cells, rows of
  cells); cells stripped of spaces and bold marks. Indented tables count."""
  tables, lines, offset = [], text.split("\n"), 0
  block, start = [], 0
  for line in lines + [""]:
    if line.strip().startswith("|"):
      if not block:
        start = offset
      block.append(line.strip())
    elif block:
      cells = [[c.strip().replace("**", "") for c in row.strip("|").split("|")]
               for row in block]
      assert set(block[1].replace("|", "")) <= {"-", ":", " "}, block[:2]
      tables.append((start, cells[0], cells[2:]))
      block = []
    offset += len(line) + 1
  return tables


def _table(text: str, header_start: list[str]):
  """The one table whose header begins with header_start."""
  found = [t for t in _tables(text) if t[1][:len(header_start)] == header_start]
  assert len(found) == 1, (header_start, len(found))
  return found[0]


def _cell(mean: float, std: float) -> str:
  return f"{mean:.3f} ± {std:.3f}"


def _mean_std(values) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(np.std(values, ddof=1))


def _backticked(cell: str) -> str:
  return re.search(r"`([^`]+)`", cell).group(1)


# --- experiments/objectives_shapes.json ----------------------------------

def _objective_runs(study: str = "objectives_shapes") -> dict[str, list[dict]]:
  data = _json(f"experiments/{study}.json")
  return {name: [by_seed[str(s)] for s in data["seeds"]]
          for name, by_seed in data["runs"].items()}


# The ResNet + BERT study and the ViT + CLIP-text one, by first header.
OBJECTIVE_TABLES = {"objectives_shapes": "objective",
                    "objectives_vit": "objective on ViT"}


@pytest.mark.parametrize("study", sorted(OBJECTIVE_TABLES))
def test_objectives_json_summary_is_its_runs(study):
  data = _json(f"experiments/{study}.json")
  assert data["seeds"] == [0, 1, 2]
  for name, runs in _objective_runs(study).items():
    for column, key in objectives_shapes.COLUMNS.items():
      np.testing.assert_allclose(data["mean_std"][name][column],
                                 _mean_std([r[key] for r in runs]),
                                 rtol=1e-12, err_msg=f"{name} {column}")


@pytest.mark.parametrize("study", sorted(OBJECTIVE_TABLES))
def test_objectives_table(study):
  runs = _objective_runs(study)
  _, header, rows = _table(_text(OBJECTIVES_PAGE),
                           [OBJECTIVE_TABLES[study], "zero-shot shape"])
  assert header[1:] == list(objectives_shapes.COLUMNS)
  assert len(rows) == len(runs)
  for row in rows:
    name = next(n for n in runs if n.split()[0] == _backticked(row[0]))
    for column, cell in zip(header[1:], row[1:]):
      key = objectives_shapes.COLUMNS[column]
      assert cell == _cell(*_mean_std([r[key] for r in runs[name]])), (
          name, column, cell)


def test_readme_demo_table_is_the_jsd_runs():
  runs = _objective_runs()["jsd (CLIP-Lite)"]
  _, header, rows = _table(_text("README.md"), ["metric", "seed 0"])
  assert header[2:4] == ["seeds 0–2: min–max", "seeds 0–2: mean ± sample std"]
  checked = 0
  for row in rows:
    if not row[0].startswith("`"):
      continue  # the wall time
    values = [r[_backticked(row[0])] for r in runs]
    assert row[1] == f"{values[0]:.3f}", row
    assert row[2] == f"{min(values):.3f}–{max(values):.3f}", row
    assert row[3] == _cell(*_mean_std(values)), row
    checked += 1
  assert checked == 8


# --- experiments/symile_xor.json -----------------------------------------

def _study_runs(study: str = "symile_xor") -> dict[str, list[dict]]:
  """A study written by experiments/runs.py: {name: [metrics per seed]}."""
  data = _json(f"experiments/{study}.json")
  return {name: [by_seed[str(s)] for s in data["seeds"]]
          for name, by_seed in data["runs"].items()}


def test_xor_json_summary_is_its_runs():
  data = _json("experiments/symile_xor.json")
  for name, runs in _study_runs().items():
    for target in symile_xor.TARGETS:
      np.testing.assert_allclose(
          data["mean_std"][name][target],
          _mean_std([r[f"zeroshot/symile_xor/{target}"] for r in runs]),
          rtol=1e-12, err_msg=f"{name} {target}")


def test_xor_table():
  runs = _study_runs()
  _, header, rows = _table(_text(OBJECTIVES_PAGE), ["predict", "objective"])
  probabilities = [float(h.removeprefix("p = ")) for h in header[2:]]
  assert probabilities == list(symile_xor.PROBABILITIES)
  kinds = set()
  for row in rows:
    target = row[0].replace(" from ", "_from_").replace(", ", "+")
    assert target in symile_xor.TARGETS, row[0]
    if row[1] == "best possible":
      expected = [f"{symile_xor.best_possible(p):.3f}" for p in probabilities]
    elif row[1].startswith("binomial SE of the best possible"):
      n = symile_xor.TEST_EXAMPLES
      assert f"{n:,} examples" in row[1]
      expected = [f"{math.sqrt(q * (1 - q) / n):.3f}" for q in
                  map(symile_xor.best_possible, probabilities)]
    else:
      loss, key = _backticked(row[1]), f"zeroshot/symile_xor/{target}"
      expected = [_cell(*_mean_std([r[key] for r in runs[f"{loss} p={p:g}"]]))
                  for p in probabilities]
    assert row[2:] == expected, row
    kinds.add((target, row[1]))
  assert len(kinds) == len(rows) == 2 * len(symile_xor.OBJECTIVES) + 2


def test_symile_missing_table():
  """Each row's mean ± sample std, and the paired difference indicator −
  zeros with its 95 % t interval (t = 4.303 at 2 degrees of freedom)."""
  runs = _study_runs("symile_missing")
  table = next(t for t in _tables(_text(OBJECTIVES_PAGE))
               if t[1][:2] == ["missing", "fill"])
  header, rows = table[1], table[2]
  targets = [h.replace(" from ", "_from_").replace(", ", "+")
             for h in header[2:]]
  assert len(rows) == 6
  for row in rows:
    rate, fill = row[0], row[1]
    keys = [f"zeroshot/symile_xor/{t}" for t in targets]
    if fill.startswith("indicator −"):
      treat, base = (runs[f"missing={rate} fill={f}"]
                     for f in ("indicator", "zeros"))
      for cell, key in zip(row[2:], keys):
        diff = (np.array([r[key] for r in treat])
                - np.array([r[key] for r in base]))
        half = 4.303 * np.std(diff, ddof=1) / np.sqrt(len(diff))
        want = "{:+.3f} [{:+.3f}, {:+.3f}]".format(
            diff.mean(), diff.mean() - half, diff.mean() + half)
        assert cell.replace("−", "-") == want, (row, key)
    else:
      group = runs[f"missing={rate} fill={fill}"]
      assert len(group) == 3
      assert row[2:] == [_cell(*_mean_std([r[k] for r in group]))
                         for k in keys], row


def test_critics_table():
  """experiments/critics_shapes.json's rows in docs/objectives.md: each
  variant's mean ± sample std, and its paired difference from dot with the
  95 % t interval (t = 4.303 at 2 degrees of freedom)."""
  runs = _study_runs("critics_shapes")
  table = next(t for t in _tables(_text(OBJECTIVES_PAGE))
               if t[1][0] == "critic")
  keys = {"linear": "linear/shapes_captions/top1",
          "SVM mAP": "svm/shapes_captions/map"}
  header, rows = table[1], table[2]
  assert len(rows) == 2 * len(runs) - 1
  for row in rows:
    name = row[0].split(" − ")[0].strip("`")
    for title, cell in zip(header[1:], row[1:]):
      values = [r[keys[title]] for r in runs[name]]
      if " − dot" in row[0]:
        diff = np.array(values) - np.array([r[keys[title]]
                                            for r in runs["dot"]])
        half = 4.303 * np.std(diff, ddof=1) / np.sqrt(len(diff))
        want = "{:+.3f} [{:+.3f}, {:+.3f}]".format(
            diff.mean(), diff.mean() - half, diff.mean() + half)
        assert cell.replace("−", "-") == want, (row, title)
      else:
        assert cell == _cell(*_mean_std(values)), (row, title)


# --- experiments/small_batch.json ----------------------------------------

def test_results_small_batch_table():
  runs = _json("experiments/small_batch.json")
  _, header, rows = _table(_text("RESULTS.md"), ["loss", "batch"])
  keys = small_batch.METRICS
  assert len(header) == 2 + len(keys)
  assert len(rows) == len(runs)
  for row in rows:
    run = next(r for r in runs if r["loss"] == row[0].lower()
               and r["batch"] == int(row[1]))
    assert row[2:] == [f"{run[k]:.3f}" for k in keys], row


# --- experiments/results/*.json (the experiment runner's studies) --------

def _study_of(text: str, offset: int) -> str:
  """The study whose command comes last before `offset`."""
  commands = [(m.start(), m.group(1)) for m in re.finditer(
      r"python experiments/experiments.py (\w+) --steps_scale", text[:offset])]
  return commands[-1][1]


def _condition_label(key: str, cond: dict) -> str:
  return key.rsplit("_s", 1)[0] + f" ({cond['condition']['steps']} steps)"


@pytest.mark.parametrize("name", ["RESULTS.md"] + [
    f"experiments/results/{s}.md" for s in STUDIES])
def test_results_tables(name):
  text = _text(name)
  tables = [t for t in _tables(text) if t[1][:2] == ["condition", "lr"]]
  assert len(tables) == (len(STUDIES) if name == "RESULTS.md" else 1)
  for offset, header, rows in tables:
    study = (_study_of(text, offset) if name == "RESULTS.md"
             else os.path.basename(name)[:-3])
    summary = _json(f"experiments/results/{study}.json")
    # The line above the table says what the ± is.
    above = text[:offset].rstrip("\n").rsplit("\n", 1)[-1]
    assert above == experiments._spread_label(summary), above
    assert header[2:] == list(experiments.METRICS)
    assert [r[0] for r in rows] == [_condition_label(k, c)
                                    for k, c in summary.items()]
    for row, (key, cond) in zip(rows, summary.items()):
      assert row[1] == f"×{cond['lr_scale']:g}", row
      assert len(cond["seeds"]) == 3
      for column, cell in zip(header[2:], row[2:]):
        assert cell == _cell(*cond["test"][column]), (study, key, column)
    # The validation grid under it.
    tuning = next(t for t in _tables(text) if t[0] > offset)
    grid = {c["tuned_on"]: (c["validation"], f"{c['lr_scale']:g}")
            for c in summary.values()}
    assert [r[0] for r in tuning[2]] == list(grid)
    scales = [h.removeprefix("×") for h in tuning[1][1:]]
    for row in tuning[2]:
      values, _ = grid[row[0]]
      assert row[1:] == [f"{values[s]:.3f}" if s in values else ""
                         for s in scales], row


def test_results_small_batch_summary():
  """RESULTS.md's shape zero-shot by batch at equal steps (300)."""
  summary = _json("experiments/results/batch.json")
  _, header, rows = _table(_text("RESULTS.md"), ["batch", "JSD"])
  objectives = {"JSD": "jsd", "InfoNCE": "infonce", "SigLIP": "sigmoid"}
  assert [int(r[0]) for r in rows] == [16, 32, 64, 128]
  for row in rows:
    for name, cell in zip(header[1:], row[1:]):
      cond = next(c for c in summary.values()
                  if c["condition"]["objective"] == objectives[name]
                  and c["condition"]["batch"] == int(row[0])
                  and c["condition"]["steps"] == 300)
      assert cell == _cell(*cond["test"]["zero-shot shape"]), (row[0], name)


# --- every "m ± s" in the prose too --------------------------------------

def _all_cells() -> set[str]:
  """Every mean ± sample std the results files give: each metric over each
  configuration's seeds, and each study cell."""
  cells = set()
  for runs in (*_objective_runs().values(),
               *_objective_runs("objectives_vit").values(),
               *_study_runs().values(), *_study_runs("symile_missing").values(),
               *_study_runs("critics_shapes").values()):
    cells.update(_cell(*_mean_std([r[key] for r in runs])) for key in runs[0])
  for study in STUDIES:
    for cond in _json(f"experiments/results/{study}.json").values():
      cells.update(_cell(*ms) for ms in cond["test"].values())
  for runs in _laclip_runs().values():
    cells.update(_cell(*_mean_std([r[key] for r in runs])) for key in runs[0])
  return cells


def _laclip_runs() -> dict[str, list[dict]]:
  """experiments/laclip_rules.json's runs: {condition: [metrics per seed]}."""
  data = _json("experiments/laclip_rules.json")
  return {c: [data["runs"][f"{c}/{seed}"] for seed in data["seeds"]]
          for c in ("none", "rules")}


def test_laclip_table_is_its_runs():
  """Each row's mean ± sample std and the paired difference with its 95 %
  t interval (t = 4.303 at 2 degrees of freedom), recomputed here."""
  runs = _laclip_runs()
  columns = {"shape, usual": "usual/shape", "colour, usual": "usual/color",
             "shape, held-out": "held_out/shape",
             "colour, held-out": "held_out/color", "linear probe": "linear",
             "t2i R@10": "t2i_r10"}
  table = next(t for t in _tables(_text(LACLIP_PAGE))
               if t[1][0] == "rewrites")
  header, rows = table[1], {row[0]: row for row in table[2]}
  assert len(runs["none"]) == 3
  for i, title in enumerate(header[1:], 1):
    key = columns[title]
    for condition in ("none", "rules"):
      values = [r[key] for r in runs[condition]]
      assert rows[condition][i] == _cell(*_mean_std(values)), (condition,
                                                               title)
    diff = (np.array([r[key] for r in runs["rules"]])
            - np.array([r[key] for r in runs["none"]]))
    half = 4.303 * np.std(diff, ddof=1) / np.sqrt(len(diff))
    want = "{:+.3f} [{:+.3f}, {:+.3f}]".format(diff.mean(), diff.mean() - half,
                                               diff.mean() + half)
    assert rows["rules − none"][i].replace("−", "-") == want, title


def _documents() -> list[str]:
  """The citing documents, BENCHMARKS.md and every other docs/ page."""
  pages = sorted(f"docs/{n}" for n in os.listdir(os.path.join(REPO, "docs"))
                 if n.endswith(".md"))
  return list(CITING) + [p for p in ["BENCHMARKS.md"] + pages
                         if p not in CITING]


@pytest.mark.parametrize("name", _documents())
def test_every_cited_mean_and_std_is_in_a_results_file(name):
  text = _text(name)
  text = re.sub(r"\s+", " ", text.replace("**", ""))  # wrapped prose
  cited = PLUS_MINUS.findall(text)
  assert cited or name not in CITING, name
  known = _all_cells()
  unknown = sorted({f"{m} ± {s}" for m, s in cited} - known)
  assert not unknown, f"{name}: {unknown}"
