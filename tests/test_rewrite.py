"""LaCLIP rewrites: prompts, output checks, the rule-based rewriter, and
generation end to end with a tiny randomly initialised causal LM (built
here from a config; no weights shipped), interrupted and resumed."""
import json
import os
import signal

import numpy as np
import pytest

from cliplite_jax.data import (pipeline, rewriting, sources, text as text_lib,
                               vocabulary)
from conftest import run_module, wait_until

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")


def test_prompt_is_laclips_form():
  pairs = [("a", "A one."), ("b", "B two."), ("c", "C three."), ("d", "D.")]
  prompt = rewriting.build_prompt(pairs, "  a red   circle ",
                                  np.random.default_rng(0), shots=3)
  lines = prompt.split("\n")
  assert lines[0] == rewriting.PROMPT_HEADER and lines[1] == ""
  shown = [line for line in lines[2:-1] if line]
  assert len(shown) == 3 and len(set(shown)) == 3
  assert set(shown) <= {f"{a} => {b}" for a, b in pairs}
  assert lines[-1] == "a red circle =>"
  # The same draw for the same key: a resumed run builds the same prompts.
  again = rewriting.build_prompt(pairs, "a red circle",
                                 rewriting.unit_rng(3, 1, 2, 0))
  assert again == rewriting.build_prompt(pairs, "a red circle",
                                         rewriting.unit_rng(3, 1, 2, 0))


@pytest.mark.parametrize("generated,want", [
    (" A big dog runs.\nmore text", ("A big dog runs.", None)),
    ("   \nA dog", (None, "empty")),
    (" 123 -- !!", (None, "no_letters")),
    (" " + "word " * 61, (None, "too_long")),
    (" a red circle.", (None, "repeats_prompt")),
    (" B two", (None, "repeats_prompt")),
    (" x => y", (None, "repeats_prompt")),
    (' "A quoted one"', ("A quoted one", None)),
])
def test_outputs_are_checked(generated, want):
  assert rewriting.clean_output(generated, "A red circle", ["b", "B two."],
                                max_words=60) == want


def test_laclips_example_sets_are_its_four():
  laclip = rewriting.read_examples("laclip")
  assert list(laclip) == ["chatgpt", "bard", "human", "coco"]
  for name in ("chatgpt", "bard", "human"):
    assert len(laclip[name]) == 16, name
  groups = laclip["coco"]["groups"]
  assert len(groups) == 18 and all(len(g) == 5 for g in groups)
  # Spot checks against LaCLIP's rewrite/utils.py.
  assert laclip["chatgpt"][0][0] == ("white and red cheerful combination in "
                                     "the bedroom for girl")
  assert laclip["bard"][0][0] == "man driving a car through the mountains"
  assert groups[0][0] == "A herd of goats walking down a road way."
  # Its ChatGPT and Bard sets share two inputs (as LaCLIP's do).
  assert len({a for a, _ in laclip["chatgpt"]}
             & {a for a, _ in laclip["bard"]}) == 2
  assert list(rewriting.read_examples("laclip", ["coco", "human"])) == [
      "coco", "human"]
  with pytest.raises(rewriting.RewriteError,
                     match=r"--sources gpt4: not in --examples laclip "
                           r"\(its sources: chatgpt, bard, human, coco\)"):
    rewriting.read_examples("laclip", ["gpt4"])


def test_a_coco_style_example_is_two_captions_of_one_image():
  groups = {"groups": [tuple(f"g{g:02d} caption {c}" for c in range(5))
                       for g in range(18)]}
  seen = set()
  for seed in range(200):
    prompt = rewriting.build_prompt(groups, "a cat",
                                    np.random.default_rng(seed))
    shown = [line for line in prompt.split("\n")[2:-1] if line]
    assert len(shown) == 3
    images = []
    for line in shown:
      first, second = line.split(" => ")
      assert first != second and first[:3] == second[:3]  # one image
      images.append(first[:3])
      seen.add((first, second))
    assert len(set(images)) == 3  # three images, without replacement
  # Every ordered pair of distinct captions can be drawn (18 × 5 × 4).
  assert len(seen) > 300
  texts = rewriting.example_texts(groups)
  assert len(texts) == 90
  assert rewriting.clean_output(" g03 caption 4.", "a cat", texts,
                                max_words=60) == (None, "repeats_prompt")


def test_rules_keep_the_meaning_of_sized_lists():
  rng = np.random.default_rng(0)
  seen = {rewriting.rule_rewrite("a large red circle and a small blue square",
                                 rng) for _ in range(200)}
  assert len(seen) > 10
  for text in seen:
    # Every object keeps its size and colour, whatever the order and words.
    assert any(s in text for s in ("large red circle", "big red circle"))
    assert any(s in text for s in ("small blue square", "little blue square"))
  # A spatial relation is never reordered.
  for _ in range(50):
    text = rewriting.rule_rewrite(
        "a small dog to the left of a large cat and a small bird", rng)
    assert text.index("dog") < text.index("cat") < text.index("bird"), text
  # No framing on a framed or listed caption.
  for _ in range(50):
    text = rewriting.rule_rewrite("a picture of a circle", rng)
    assert text.count(" of ") == 1, text
  # Unsized lists keep their order (it says which shape is the largest).
  for _ in range(50):
    text = rewriting.rule_rewrite("a picture of a circle and a square", rng)
    assert text.index("circle") < text.index("square"), text
  assert "a image" not in " ".join(
      rewriting.rule_rewrite("a picture of a circle", rng) for _ in range(50))


def test_examples_file_errors(tmp_path):
  ours = rewriting.read_examples()
  assert ours == rewriting.read_examples("ours")
  assert len(ours) == 4 and all(len(p) >= 12 for p in ours.values())
  bad = tmp_path / "examples.json"
  for text, message in (("[1, 2]", "JSON object"),
                        ('{"s": [["only one"]]}', "string pairs"),
                        ('{"s": {"groups": [["one caption"]]}}',
                         "two or more captions"),
                        ('{"#": "a note only"}', "has no sources"),
                        ("{", "not JSON")):
    bad.write_text(text)
    with pytest.raises(rewriting.RewriteError, match=message):
      rewriting.read_examples(str(bad))


def test_progress_file_refuses_other_settings_and_skips_a_torn_line(
    tmp_path):
  out = str(tmp_path / "r.json")
  store = rewriting.Store(out, {"num": 2, "seed": 0})
  store.add(0, [("7", "a rewrite")], {"empty": 1})
  with open(store.partial, "a") as f:
    f.write('{"batch": 1, "rew')
  with pytest.raises(rewriting.RewriteError, match="other settings .num."):
    rewriting.Store(out, {"num": 3, "seed": 0})
  resumed = rewriting.Store(out, {"num": 2, "seed": 0})
  assert list(resumed.done) == [0]
  resumed.add(1, [("7", "another"), ("8", "third"), ("7", "a rewrite")],
              {"too_long": 2})
  meta = resumed.finish({})
  assert json.load(open(out)) == {"7": ["a rewrite", "another"],
                                  "8": ["third"]}
  assert meta["dropped"] == {"empty": 1, "no_letters": 0, "too_long": 2,
                             "repeats_prompt": 0, "duplicate": 1}
  assert not os.path.exists(store.partial)


def _tiny_lm(path: str) -> None:
  """A 1-layer GPT-2 with a character vocabulary (so that a line end is
  likely within a few sampled tokens), saved with its tokenizer."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789 .,:;'\"!?-=>()\n"))
  vocab = {c: i for i, c in enumerate(["<unk>", "</s>"] + chars)}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
  tokenizer.decoder = decoders.Fuse()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>",
      pad_token="</s>")
  config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=1024,
                                   n_embd=32, n_layer=1, n_head=2,
                                   eos_token_id=1, bos_token_id=1)
  import torch
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(config).save_pretrained(path)
  fast.save_pretrained(path)


def _rewrite_args(data_dir, model, out, *extra):
  return ["--data=shapes_captions/tiny", "--split=validation",
          f"--data_dir={data_dir}", f"--model={model}", f"--out={out}",
          "--num=1", "--batch_size=8", "--max_new_tokens=10",
          "--temperature=2.0", *extra]


def test_generation_end_to_end_resumes_after_a_kill(tiny_data_dir, tmp_path):
  model = str(tmp_path / "lm")
  _tiny_lm(model)
  whole = str(tmp_path / "whole.json")
  result = run_module("cliplite_jax.rewrite",
                      *_rewrite_args(tiny_data_dir, model, whole))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "rewrites: 320/320 (" in result.stderr  # 64 images × 5 captions
  meta = json.load(open(whole + ".meta.json"))
  rewrites = json.load(open(whole))
  kept, dropped = meta["rewrites"], sum(meta["dropped"].values())
  assert kept + dropped == 320 and kept > 0 and dropped > 0
  assert kept == sum(len(v) for v in rewrites.values())
  assert set(rewrites) <= {str(i) for i in range(64)}
  assert meta["model"]["model_type"] == "gpt2"
  assert meta["examples"] == {k: [list(p) for p in v] for k, v in
                              rewriting.read_examples().items()}
  assert all(t.strip() and "\n" not in t and "=>" not in t
             for texts in rewrites.values() for t in texts)
  assert pipeline.load_rewrites(whole) == rewrites
  assert not os.path.exists(whole + ".partial.jsonl")

  # Killed after a few batches, then rerun: the same file as without the
  # kill (draws are keyed by example and batch, not by the run).
  resumed = str(tmp_path / "resumed.json")
  args = _rewrite_args(tiny_data_dir, model, resumed)
  process = run_module("cliplite_jax.rewrite", *args, popen=True)
  partial = resumed + ".partial.jsonl"
  wait_until(lambda: (os.path.exists(partial) and
                      open(partial).read().count("\n") >= 4),
             process, "4 batches written", timeout=400)
  process.send_signal(signal.SIGKILL)
  process.wait()
  with open(partial, "a") as f:
    f.write('{"batch": 99, "rewr')  # as if killed mid-write
  again = run_module("cliplite_jax.rewrite", *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "continuing:" in again.stderr
  assert json.load(open(resumed)) == rewrites


def test_a_bad_model_leaves_nothing_behind(tiny_data_dir, tmp_path):
  out = str(tmp_path / "r.json")
  result = run_module("cliplite_jax.rewrite",
                      *_rewrite_args(tiny_data_dir, str(tmp_path), out))
  assert result.returncode == 1
  line, = result.stderr.strip().splitlines()
  assert line.startswith("cliplite_jax.rewrite: error: --model") and (
      "config.json" in line)
  assert os.listdir(tmp_path) == []


def test_rule_rewrites_are_read_back_by_training(tiny, tmp_path):
  out = str(tmp_path / "rules.json")
  result = run_module("cliplite_jax.rewrite", "--data=shapes_captions/tiny",
                      f"--data_dir={tiny.data.data_dir}", "--model=rules",
                      f"--out={out}", "--num=1")
  assert result.returncode == 0, result.stderr[-3000:]
  rewrites = pipeline.load_rewrites(out)
  # The file is the rules applied to each (example, caption) with its own
  # seeded draw, in split order, without the ones equal to their caption or
  # to an earlier rewrite of the image.
  source, _ = sources.get("shapes_captions/tiny")
  examples = sources.open_split("shapes_captions/tiny", "train",
                                tiny.data.data_dir)
  want = {}
  for i in range(len(examples)):
    for j, caption in enumerate(sources.decode_captions(source, examples[i])):
      text, _ = rewriting.clean_output(rewriting.rule_rewrite(
          caption.decode(), rewriting.unit_rng(0, i, j, 0)), caption.decode(),
          [], max_words=60)
      if text and text not in want.setdefault(str(i), []):
        want[str(i)].append(text)
  assert rewrites == want and len(want) == 256

  originals = vocabulary.all_captions(tiny, "train")
  tiny.data.rewrites = out
  # A new run's tokenizer learns the rewrites' words too.
  texts = vocabulary.all_captions(tiny, "train")
  assert sorted(texts) == sorted(originals + [
      text_lib.clean_caption(t) for v in rewrites.values() for t in v])
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(texts, 400), 30)
  framing = {tokenizer.token_to_id(w) for w in ("drawing", "background")}
  assert None not in framing and not any(
      w in t.split() for t in originals for w in ("drawing", "background"))
  stream = iter(pipeline.train_dataset(tiny, tokenizer))
  ids = np.concatenate([next(stream)["input_ids"] for _ in range(8)])
  drawn = np.isin(ids, list(framing)).any(axis=1).mean()
  assert 0.02 < drawn < 0.5  # some rows drew a rewrite, most an original
  assert source.id_key is None  # keys are the examples' split indices


@pytest.mark.parametrize("min_words", [2, 0])
def test_a_one_word_rewrite_falls_back_to_an_original(tiny, min_words):
  """LaCLIP's rule: a drawn rewrite of fewer than two words is replaced by
  one of the image's own captions (drawn uniformly); 0 keeps it. One that
  cleans to nothing is replaced either way."""
  source, name = sources.get(tiny.data.name)
  example = sources.open_split(name, "train", tiny.data.data_dir)[0]
  originals = [text_lib.clean_caption(c.decode())
               for c in sources.decode_captions(source, example)]
  assert len(originals) == 5
  rewrites = {sources.image_id(source, 0, example): [
      "blob", "a huge purple blob", "-- .."]}
  tokenizer = text_lib.fixed_length(text_lib.train_wordpiece(
      originals + ["blob", "a huge purple blob"], 200), 30)
  tiny.data.rewrite_min_words = min_words
  tiny.data.flip = False  # which would swap "left" and "right"
  transform = pipeline.TrainTransform(source, tokenizer, tiny.data, rewrites)
  special = {"[CLS]", "[SEP]", "[PAD]"}
  drawn = [" ".join(w for w in tokenizer.decode(transform.random_map(
      (0, example), np.random.default_rng(seed))["input_ids"].tolist()
  ).split() if w not in special) for seed in range(1400)]
  share = {text: drawn.count(text) / len(drawn) for text in set(drawn)}
  assert set(share) <= set(originals) | {"blob", "a huge purple blob"}
  # 8 captions: 5 originals, a one-word rewrite, a longer one, an empty one.
  assert share["a huge purple blob"] == pytest.approx(1 / 8, abs=0.03)
  assert "" not in share
  if min_words:
    assert "blob" not in share
    assert sum(share[c] for c in originals) == pytest.approx(7 / 8, abs=0.03)
  else:
    assert share["blob"] == pytest.approx(1 / 8, abs=0.03)
    assert sum(share[c] for c in originals) == pytest.approx(6 / 8, abs=0.03)


def test_unknown_example_sources_are_one_line(tiny_data_dir, tmp_path):
  model = str(tmp_path / "lm")
  _tiny_lm(model)
  out = str(tmp_path / "r.json")
  for flags, want in (
      (["--sources=coco,gpt4"], "--sources gpt4: not in --examples laclip "
       "(its sources: chatgpt, bard, human, coco)"),
      (["--sources=bard,bard"], "--sources bard,bard: name each source "
       "once, separated by commas")):
    result = run_module("cliplite_jax.rewrite", *_rewrite_args(
        tiny_data_dir, model, out, "--examples=laclip", *flags))
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert line == f"cliplite_jax.rewrite: error: {want}"
  result = run_module("cliplite_jax.rewrite", *_rewrite_args(
      tiny_data_dir, "rules", out, "--examples=laclip"))
  assert result.stderr.strip() == (
      "cliplite_jax.rewrite: error: --examples: in-context examples prompt "
      "a language model; --model=rules rewrites without them")
  assert sorted(os.listdir(tmp_path)) == ["lm"]
