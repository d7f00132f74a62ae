"""`cliplite_jax.prepare`: every input format to the same prepared examples,
bad rows skipped and counted, interrupted runs continued without
duplicates, the dataset card, bad input as one line."""
import collections
import json
import os

import pytest

import photos
from cliplite_jax import prepare
from cliplite_jax.data import prepare_units, prepared, readers, sources
from conftest import run_module


def _prepare(out, *sources_, **options):
  return prepare.run(prepare.Options(source=list(sources_), out=str(out),
                                     **options))


def _examples(out) -> dict[str, list]:
  """{split: sorted (image bytes, sorted captions)} of a prepared set."""
  card = prepared.read_card(str(out))
  got = {}
  for split in card["splits"]:
    examples = prepared.Examples(str(out), split)
    got[split] = sorted((ex["image"], tuple(sorted(ex["captions"])))
                        for ex in (examples[i] for i in range(len(examples))))
  return got


def _expected() -> dict[str, list]:
  want = collections.defaultdict(list)
  for name, captions in photos.CAPTIONS.items():
    split = "test" if name in photos.TEST else "train"
    want[split].append((photos.jpeg(name), tuple(sorted(captions))))
  return {split: sorted(v) for split, v in want.items()}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("photos")
  return {"jsonl": photos.write_jsonl(str(root / "jsonl")),
          "csv": photos.write_csv(str(root / "csv")),
          "tsv": photos.write_csv(str(root / "tsv"), delimiter="\t").replace(
              "captions.csv", "captions.tsv"),
          "webdataset": photos.write_webdataset(str(root / "wds"))}


def test_jsonl_csv_and_webdataset_prepare_to_the_same_examples(
    photo_files, tmp_path):
  want = _expected()
  cards = {
      "jsonl": _prepare(tmp_path / "j", photo_files["jsonl"],
                        examples_per_shard=4),
      "csv": _prepare(tmp_path / "c", photo_files["csv"],
                      image_column="filepath", caption_column="title"),
      "webdataset": _prepare(
          tmp_path / "w", f"train={photo_files['webdataset']['train']}",
          f"test={photo_files['webdataset']['test']}", num_workers=2),
  }
  for fmt, out in (("jsonl", "j"), ("csv", "c"), ("webdataset", "w")):
    assert _examples(tmp_path / out) == want, fmt
    # One missing and one undecodable image in each format, nothing else.
    counts = {k: v for k, v in cards[fmt]["skipped"]["counts"].items() if v}
    assert counts == {"missing": 1, "undecodable": 1}, fmt
  # 12 photos at 4 per bucket: more than one shard per split, all counted.
  shards = cards["jsonl"]["splits"]["train"]["shards"]
  assert len(shards) > 1
  assert sum(s["examples"] for s in shards) == len(want["train"])
  # Caption statistics, counted independently.
  words = [len(c.split()) for name, cs in photos.CAPTIONS.items()
           if name not in photos.TEST for c in cs]
  stats = cards["csv"]["splits"]["train"]["caption_words"]
  assert stats["captions"] == len(words)
  assert stats["mean_words"] == pytest.approx(sum(words) / len(words), abs=0.01)
  assert (stats["min_words"], stats["max_words"]) == (min(words), max(words))
  assert os.path.exists(tmp_path / "c" / "dataset_card.md")
  assert not os.path.exists(tmp_path / "c" / ".work")


def test_tsv_with_seeded_split_fractions(photo_files, tmp_path):
  with open(photo_files["tsv"].replace(".tsv", ".csv")) as f:
    text = f.read().replace(",", "\t")
  with open(photo_files["tsv"], "w") as f:
    f.write(text)
  card = _prepare(tmp_path / "t", photo_files["tsv"], image_column="filepath",
                  caption_column="title", split_column="none",
                  split_fractions="validation=0.25,test=0.25", split_seed=3)
  got = _examples(tmp_path / "t")
  assert sum(len(v) for v in got.values()) == len(photos.CAPTIONS)
  # Each image's split is the seeded draw on its path, independently of
  # the format: the same draw here.
  want = collections.Counter(prepare_units.draw_split(
      f"img/{name}.jpg", {"validation": 0.25, "test": 0.25}, 3)
      for name in photos.CAPTIONS)
  assert {s: info["examples"] for s, info in card["splits"].items()} == want
  # All three captions of an image stay together, though the rows scatter.
  assert all(len(captions) == 3 for v in got.values() for _, captions in v)


def test_karpathy_split_file_keeps_its_splits(photo_files, tmp_path):
  root = os.path.dirname(photo_files["jsonl"])
  karpathy = {"images": [
      {"filepath": "img", "filename": f"{name}.jpg",
       "split": {"coins": "test", "flower": "val"}.get(name, "train"),
       "sentences": [{"raw": c, "tokens": c.split()} for c in captions]}
      for name, captions in photos.CAPTIONS.items()]}
  path = os.path.join(root, "dataset_flickr30k.json")
  with open(path, "w") as f:
    json.dump(karpathy, f)
  card = _prepare(tmp_path / "k", f"karpathy:{path}")
  assert {s: i["examples"] for s, i in card["splits"].items()} == {
      "train": 10, "val": 1, "test": 1}
  source, _ = sources.get(str(tmp_path / "k"))
  assert source.eval_split == "test" and source.probes == {"retrieval", "gap"}


def test_interrupted_prepare_continues_without_duplicates(
    photo_files, tmp_path, monkeypatch):
  real_convert, calls = prepare_units.convert, []

  def convert_then_stop(*job):
    if len(calls) == 2:
      raise KeyboardInterrupt
    calls.append(job[2])
    real_convert(*job)

  monkeypatch.setattr(prepare_units, "convert", convert_then_stop)
  with pytest.raises(KeyboardInterrupt):
    _prepare(tmp_path / "p", photo_files["jsonl"], examples_per_shard=2)
  assert not os.path.exists(tmp_path / "p" / prepared.CARD)
  with pytest.raises(FileNotFoundError, match="rerun the same prepare"):
    prepared.read_card(str(tmp_path / "p"))
  done_first = list(calls)
  monkeypatch.setattr(prepare_units, "convert", lambda *job: (
      calls.append(job[2]), real_convert(*job)))
  _prepare(tmp_path / "p", photo_files["jsonl"], examples_per_shard=2)
  assert not set(done_first) & set(calls[2:])  # done units not redone
  assert _examples(tmp_path / "p") == _expected()
  # A third run finds it finished; other flags on the same --out refuse.
  _prepare(tmp_path / "p", photo_files["jsonl"], examples_per_shard=2)
  with pytest.raises(prepare.PrepareError, match="other flags"):
    _prepare(tmp_path / "p", photo_files["jsonl"], examples_per_shard=3)


def test_tfds_keys_caption_set_and_class_set(tiny_data_dir, tmp_path):
  import tensorflow_datasets as tfds
  name = "shapes_captions/tiny"
  card = _prepare(tmp_path / "cap", f"tfds:{name}", text_key="captions",
                  data_dir=tiny_data_dir, examples_per_shard=100)
  builder = tfds.builder(name, data_dir=tiny_data_dir)
  assert {s: i["examples"] for s, i in card["splits"].items()} == {
      s: i.num_examples for s, i in builder.info.splits.items()}
  original = tfds.data_source(name, split="validation", data_dir=tiny_data_dir,
                              decoders={"image": tfds.decode.SkipDecoding()})
  mine = prepared.Examples(str(tmp_path / "cap"), "validation")
  for i in (0, len(original) - 1):
    assert mine[i]["image"] == original[i]["image"]
    assert mine[i]["captions"] == [c.decode() for c in original[i]["captions"]]
  card = _prepare(tmp_path / "cls", f"test=tfds:{name}",
                  label_key="largest_color", data_dir=tiny_data_dir)
  assert card["kind"] == "classes" and list(card["splits"]) == ["test"]
  assert card["class_names"] == builder.info.features["largest_color"].names
  ex = prepared.Examples(str(tmp_path / "cls"), "test")[3]
  test = tfds.data_source(name, split="test", data_dir=tiny_data_dir,
                          decoders={"image": tfds.decode.SkipDecoding()})
  assert ex["label"] == int(test[3]["largest_color"])


@pytest.mark.parametrize("args, message", [
    (["--source=notes.txt"], "cannot tell its format"),
    (["--source={jsonl}", "--split_fractions=test=1.5"], "--split_fractions"),
    (["--source={csv}", "--image_column=path"], "no column 'path'"),
    (["--source={bad}"], "bad.jsonl:2: not JSON"),
    (["--source=tfds:no_such_dataset_xyz"], "tfds:no_such_dataset_xyz"),
    (["--source={latin1}"], "latin1.jsonl:3: not UTF-8 text (byte 0xe9 at "
     "column 35)"),
    (["--source={latin1_csv}"], "latin1.csv:4: not UTF-8 text (byte 0xe9"),
    (["--source={jsonl}", "--class_names={latin1}"],
     "--class_names: {latin1}:3: not UTF-8"),
])
def test_bad_input_is_one_line_and_writes_nothing(photo_files, tmp_path, args,
                                                   message):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"image": "a.jpg", "caption": "x"}\n{oops\n')
  latin1 = tmp_path / "latin1.jsonl"
  latin1.write_bytes(b'{"image": "a.jpg", "caption": "x"}\n' * 2
                     + '{"image": "b.jpg", "caption": "caf\u00e9"}\n'
                     .encode("latin-1"))
  latin1_csv = tmp_path / "latin1.csv"
  latin1_csv.write_bytes(b"image,caption\na.jpg,x\nb.jpg,y\n"
                         + "c.jpg,caf\u00e9\n".encode("latin-1"))
  message = message.format(latin1=latin1)
  args = [a.format(bad=bad, latin1=latin1, latin1_csv=latin1_csv,
                   **{k: v for k, v in photo_files.items()
                               if isinstance(v, str)}) for a in args]
  out = tmp_path / "out"
  result = run_module("cliplite_jax.prepare", *args, f"--out={out}")
  assert result.returncode == 1, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and message in lines[0], result.stderr
  assert not os.path.exists(out / prepared.CARD)


def _folder_set(root, classes):
  for folder, names in classes.items():
    os.makedirs(root / folder, exist_ok=True)
    for name in names:
      (root / folder / f"{name}.jpg").write_bytes(photos.jpeg(name))


def test_class_folders_hidden_folders_names_and_templates(tmp_path):
  _folder_set(tmp_path / "cls", {"cat": ["chelsea"], "cup": ["coffee"],
                                 ".ipynb_checkpoints": ["moon"]})
  (tmp_path / "cls" / "cup" / "notes.txt").write_text("not an image")
  names = tmp_path / "names.txt"
  names.write_text("a cat\n")
  with pytest.raises(prepare.PrepareError, match="1 names for 2 classes"):
    _prepare(tmp_path / "a", f"folder:{tmp_path / 'cls'}",
             class_names=str(names))
  names.write_text("a cat\na cup of coffee\n")
  templates = tmp_path / "t.txt"
  for bad in ("a {} in {style}", "a photo"):
    templates.write_text(f"{bad}\n")
    with pytest.raises(prepare.PrepareError, match="no other braces"):
      _prepare(tmp_path / "b", f"folder:{tmp_path / 'cls'}",
               class_names=str(names), templates=str(templates))
  card = _prepare(tmp_path / "c", f"folder:{tmp_path / 'cls'}",
                  class_names=str(names))
  assert card["class_names"] == ["a cat", "a cup of coffee"]
  examples = prepared.Examples(str(tmp_path / "c"), "train")
  labels = {examples[i]["key"]: examples[i]["label"] for i in range(2)}
  assert labels == {"cat/chelsea.jpg": 0, "cup/coffee.jpg": 1}


def test_tsv_quotes_bom_and_malformed_rows(tmp_path):
  photos.write_images(str(tmp_path))
  tsv = tmp_path / "caps.tsv"
  tsv.write_text('\ufeffimage\tcaption\n'
                 'img/coffee.jpg\t"latte" art in a cup\n'
                 'img/moon.jpg\tthe moon\n', encoding="utf-8")
  _prepare(tmp_path / "t", str(tsv))
  got = _examples(tmp_path / "t")["train"]
  assert sorted(c for _, cs in got for c in cs) == [
      '"latte" art in a cup', "the moon"]
  csv_file = tmp_path / "short.csv"
  csv_file.write_text("caption,image\na moon\n")
  with pytest.raises(readers.SourceError, match="short.csv:2: fewer fields"):
    _prepare(tmp_path / "s", str(csv_file))
  for line, message in (('{"image": "img/moon.jpg", "caption": "x", '
                         '"split": "a/b"}', "is not a name"),
                        ('{"image": "img/moon.jpg", "caption": "x", '
                         '"label": "cat"}', "not a class index")):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(line + "\n")
    with pytest.raises(readers.SourceError, match=f"bad.jsonl:1: .*{message}"):
      _prepare(tmp_path / "j", str(bad))
    assert not os.path.exists(tmp_path / "j")  # nothing left behind
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(prepare.PrepareError, match="no usable example"):
    _prepare(tmp_path / "e", str(empty))


def test_out_must_be_new_empty_or_this_preparation(photo_files, tmp_path):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(prepare.PrepareError, match="is a file"):
    _prepare(tmp_path / "afile", photo_files["jsonl"])
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "mine.txt").write_text("keep me")
  with pytest.raises(prepare.PrepareError, match="holds other files"):
    _prepare(tmp_path / "full", photo_files["jsonl"])
  assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_an_edited_source_is_not_continued_over(photo_files, tmp_path,
                                                monkeypatch):
  root = os.path.dirname(photo_files["jsonl"])
  source = os.path.join(root, "edited.jsonl")
  with open(photo_files["jsonl"]) as f:
    lines = f.readlines()
  with open(source, "w") as f:
    f.writelines(lines[:6])
  real_convert = prepare_units.convert

  def stop_after_one(*job):
    monkeypatch.setattr(prepare_units, "convert", _interrupt)
    real_convert(*job)

  monkeypatch.setattr(prepare_units, "convert", stop_after_one)
  with pytest.raises(KeyboardInterrupt):
    _prepare(tmp_path / "p", source, examples_per_shard=2)
  with open(source, "a") as f:
    f.writelines(lines[6:])
  monkeypatch.setattr(prepare_units, "convert", real_convert)
  with pytest.raises(prepare.PrepareError, match="older version of its "
                     "sources.*fingerprints"):
    _prepare(tmp_path / "p", source, examples_per_shard=2)


def _interrupt(*job):
  raise KeyboardInterrupt


def test_out_under_a_file_is_one_line(photo_files, tmp_path):
  (tmp_path / "file").write_text("x")
  for out in (tmp_path / "file", tmp_path / "file" / "x"):
    result = run_module("cliplite_jax.prepare",
                        f"--source={photo_files['jsonl']}", f"--out={out}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is a file" in lines[0] or (
        "lies under a file" in lines[0]), result.stderr
  assert (tmp_path / "file").read_text() == "x"


def test_unreadable_paths_are_skipped_and_one_image_is_one_path(tmp_path):
  """A self-symlink (ELOOP), a 300-character name (ENAMETOOLONG) and a NUL
  byte are missing images, counted; img/x, ./img/x and img//x are one."""
  os.makedirs(tmp_path / "img")
  (tmp_path / "img" / "coffee.jpg").write_bytes(photos.jpeg("coffee"))
  os.symlink("loop.jpg", tmp_path / "img" / "loop.jpg")
  rows = [("img/coffee.jpg", "a cup"), ("./img/coffee.jpg", "a red cup"),
          ("img//coffee.jpg", "coffee on a saucer"),
          ("img/loop.jpg", "a loop"), ("img/" + "n" * 300 + ".jpg", "long"),
          ("img/nul\u0000.jpg", "nul")]
  source = tmp_path / "captions.jsonl"
  source.write_text("".join(json.dumps({"image": i, "caption": c}) + "\n"
                            for i, c in rows))
  card = _prepare(tmp_path / "out", str(source))
  assert card["splits"]["train"]["examples"] == 1
  assert card["splits"]["train"]["captions"] == 3
  assert card["skipped"]["counts"]["missing"] == 3
  shown = "\n".join(card["skipped"]["examples"])
  assert "symbolic links" in shown and "too long" in shown and "NUL" in shown


def test_an_image_in_two_splits_is_kept_once_and_reported(tmp_path, capsys):
  os.makedirs(tmp_path / "img")
  for name in ("coffee", "chelsea"):
    (tmp_path / "img" / f"{name}.jpg").write_bytes(photos.jpeg(name))
  source = tmp_path / "captions.jsonl"
  source.write_text("".join(json.dumps(r) + "\n" for r in (
      {"image": "img/coffee.jpg", "caption": "a cup", "split": "train"},
      {"image": "img/chelsea.jpg", "caption": "a cat", "split": "train"},
      {"image": "img/coffee.jpg", "caption": "a red cup", "split": "test"})))
  card = _prepare(tmp_path / "out", str(source))
  assert {k: v["examples"] for k, v in card["splits"].items()} == {"train": 2}
  assert card["split_conflicts"]["count"] == 1
  assert "img/coffee.jpg: in train and test" in (
      card["split_conflicts"]["examples"][0])
  assert "1 images are listed in more than one split" in capsys.readouterr().err
  assert "more than one split: 1" in (tmp_path / "out" /
                                      "dataset_card.md").read_text()


def test_a_run_with_no_usable_example_leaves_nothing_to_continue(
    photo_files, tmp_path):
  """A typo in --images: every image missing. The corrected command then
  runs, instead of being refused as an unfinished run with other flags."""
  out = tmp_path / "out"
  with pytest.raises(prepare.PrepareError, match="no usable example"):
    _prepare(out, photo_files["jsonl"], images=str(tmp_path / "typo"))
  assert not out.exists()
  card = _prepare(out, photo_files["jsonl"])
  assert card["splits"]["train"]["examples"] > 0


def test_an_image_named_by_two_sources_is_reported(tmp_path, capsys):
  os.makedirs(tmp_path / "img")
  for name in ("coffee", "chelsea"):
    (tmp_path / "img" / f"{name}.jpg").write_bytes(photos.jpeg(name))
  for name, rows in (("a", ("img/coffee.jpg", "img/chelsea.jpg")),
                     ("b", ("./img/coffee.jpg",))):
    (tmp_path / f"{name}.jsonl").write_text("".join(
        json.dumps({"image": r, "caption": "x"}) + "\n" for r in rows))
  card = _prepare(tmp_path / "out", f"train={tmp_path / 'a.jsonl'}",
                  f"test={tmp_path / 'b.jsonl'}")
  assert "1 images are named by both" in capsys.readouterr().err
  assert card["images_in_several_sources"] == [
      f"1 images named by both train={tmp_path / 'a.jsonl'} and "
      f"test={tmp_path / 'b.jsonl'}"]
  assert "Warning: 1 images named by both" in (
      tmp_path / "out" / "dataset_card.md").read_text()


def test_a_new_format_is_one_registry_row_and_its_reader(tmp_path,
                                                         monkeypatch):
  """A toy format ("pairs:FILE", lines "image|caption") registered in
  formats.FORMATS prepares like the built-in ones: found by its prefix,
  fingerprinted, partitioned and converted."""
  from cliplite_jax.data import formats

  def pair_rows(location, opts):
    with open(location) as f:
      for line in f:
        image, caption = line.rstrip("\n").split("|")
        yield readers.Row(image, [caption])

  monkeypatch.setitem(formats.FORMATS, "pairs", formats.Format(
      explicit=True, fingerprinted=True, rows=pair_rows,
      root=lambda location, opts: os.path.dirname(location)))
  os.makedirs(tmp_path / "img")
  for name in ("coffee", "chelsea"):
    (tmp_path / "img" / f"{name}.jpg").write_bytes(photos.jpeg(name))
  source = tmp_path / "list.txt"
  source.write_text("img/coffee.jpg|a cup\nimg/chelsea.jpg|a cat\n"
                    "img/coffee.jpg|a red cup\n")
  card = _prepare(tmp_path / "out", f"pairs:{source}")
  assert card["spec"]["fingerprints"][0][0] == source.stat().st_size
  got = {ex["key"]: sorted(ex["captions"]) for ex in (
      prepared.Examples(str(tmp_path / "out"), "train")[i] for i in range(2))}
  assert got == {"img/coffee.jpg": ["a cup", "a red cup"],
                 "img/chelsea.jpg": ["a cat"]}
