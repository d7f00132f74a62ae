"""Caption fields: prepare keeps other caption kinds (`--caption_fields`),
and training draws a field by `data.caption_fields`' probabilities, then
one of its captions: measured shares, exact resume, 2 processes = 1."""
import json
import os
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from cliplite_jax import config_io, prepare
from cliplite_jax.data import pipeline, prepared, text as text_lib
from cliplite_jax.data.prepare_options import PrepareError
from cliplite_jax.training import run_start
from conftest import assert_stream_resumes_and_splits

COUNT = 40


def _png(seed: int) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.random.default_rng(seed).integers(
      0, 256, (8, 8, 3), np.uint8)).save(out, format="PNG")
  return out.getvalue()


@pytest.fixture(scope="module")
def fielded(tmp_path_factory):
  """COUNT images whose captions say "orig" and whose field "gen" says
  "gen" (every fifth image has none), prepared with --caption_fields=gen."""
  root = tmp_path_factory.mktemp("fields")
  os.makedirs(root / "img")
  lines = []
  for i in range(COUNT):
    (root / "img" / f"{i}.png").write_bytes(_png(i))
    row = {"image": f"img/{i}.png", "caption": f"orig number {i}"}
    if i % 5:
      row["gen"] = [f"gen variant {i}", f"gen other {i}"]
    lines.append(json.dumps(row))
  (root / "c.jsonl").write_text("\n".join(lines) + "\n")
  out = str(root / "prepared")
  prepare.run(prepare.Options(source=[str(root / "c.jsonl")], out=out,
                              caption_fields="gen", examples_per_shard=16))
  return out


def test_prepare_keeps_each_field_from_jsonl_csv_and_webdataset(
    fielded, tmp_path):
  card = prepared.read_card(fielded)
  assert card["caption_fields"] == ["gen"]
  assert card["splits"]["train"]["fields"] == {"gen": 2 * (COUNT - COUNT // 5)}
  examples = prepared.Examples(fielded, "train")
  by_key = {examples[i]["key"]: examples[i] for i in range(len(examples))}
  assert by_key["img/3.png"]["captions"] == ["orig number 3"]
  assert by_key["img/3.png"]["fields"] == {"gen": ["gen variant 3",
                                                   "gen other 3"]}
  assert by_key["img/5.png"]["fields"] == {"gen": []}
  # CSV: a column; webdataset: the json's key. Two rows of one image merge.
  (tmp_path / "img").mkdir()
  (tmp_path / "img" / "a.png").write_bytes(_png(0))
  (tmp_path / "c.csv").write_text("image,caption,gen\nimg/a.png,one,uno\n"
                                  "img/a.png,two,dos\n")
  with tarfile.open(tmp_path / "s.tar", "w") as tar:
    for name, data in (("k.png", _png(1)), ("k.json", json.dumps(
        {"caption": "three", "gen": "tres"}).encode())):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  for source, want in ((tmp_path / "c.csv", (["one", "two"], ["uno", "dos"])),
                       (tmp_path / "s.tar", (["three"], ["tres"]))):
    out = str(tmp_path / f"out_{source.suffix[1:]}")
    prepare.run(prepare.Options(source=[str(source)], out=out,
                                caption_fields="gen"))
    record = prepared.Examples(out, "train")[0]
    assert (record["captions"], record["fields"]["gen"]) == want


def test_a_field_found_in_no_example_is_warned_of(tmp_path, capsys):
  (tmp_path / "a.png").write_bytes(_png(0))
  (tmp_path / "c.jsonl").write_text(json.dumps(
      {"image": "a.png", "caption": "one", "gen": "uno"}) + "\n")
  prepare.run(prepare.Options(source=[str(tmp_path / "c.jsonl")],
                              out=str(tmp_path / "o"), caption_fields="gne"))
  assert "'gne' was found in no example (a typo?)" in capsys.readouterr().err


def test_fields_prepare_cannot_keep_are_one_line(tmp_path):
  (tmp_path / "k.json").write_text(json.dumps({"images": []}))
  for fields, source, message in (
      ("gen", f"karpathy:{tmp_path / 'k.json'}", "reads JSONL, CSV/TSV and "
       "webdataset"),
      ("caption", str(tmp_path / "c.jsonl"), "reserved names")):
    with pytest.raises(PrepareError, match=message):
      prepare.run(prepare.Options(source=[source], out=str(tmp_path / "o"),
                                  caption_fields=fields))
  assert not (tmp_path / "o").exists()


def _config(tiny, fielded, fields="captions=0.25,gen=0.75"):
  tiny.data.name = fielded
  tiny.data.caption_fields = fields
  tiny.data.image_size = 16
  tiny.batch_size = 40
  return tiny


def _tokenizer(config):
  return text_lib.fixed_length(text_lib.train_wordpiece(
      ["orig number gen variant other"] + [str(i) for i in range(COUNT)],
      200), config.data.max_tokens)


def test_fields_are_drawn_by_their_probabilities_over_10k(tiny, fielded):
  """0.25 / 0.75 over the examples having both; the fifth without "gen"
  always draws its caption (the probabilities renormalised over the fields
  it has): 0.8 · 0.75 = 0.6 of all draws are "gen", within 1 %."""
  config = _config(tiny, fielded)
  tokenizer = _tokenizer(config)
  gen, orig = tokenizer.token_to_id("gen"), tokenizer.token_to_id("orig")
  batches = iter(pipeline.train_dataset(config, tokenizer))
  first = np.concatenate([next(batches)["input_ids"][:, 1]
                          for _ in range(250)])
  assert len(first) == 10_000 and set(first) == {gen, orig}
  assert abs(np.mean(first == gen) - 0.6) < 0.01


def test_a_run_with_fields_resumes_exactly_and_is_the_same_on_two_processes(
    tiny, fielded):
  config = _config(tiny, fielded)
  config.batch_size = 16
  assert_stream_resumes_and_splits(config, _tokenizer(config), 6, 3)


def test_a_field_the_set_does_not_keep_is_refused_at_start(tiny, fielded):
  config = _config(tiny, fielded, "captions=1,blip=1")
  config.eval.probes = ()  # the set has a train split only
  with pytest.raises(config_io.UserError, match="draws blip, which .* does "
                     "not keep .*fields: captions, gen"):
    run_start.check_data(config)
