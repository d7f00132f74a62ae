"""export_hf: a run of released (or CLIP/SigLIP-shaped) towers as a
transformers directory that `from_pretrained` loads and that gives the
run's embeddings; the towers alone under CLIP-Lite's heads; one line for
towers transformers has no form for."""
import json
import os

import numpy as np
import pytest
import torch
import transformers

import photos
from conftest import REPO, run_module
from cliplite_jax import inference
from cliplite_jax.data import augment, text as text_lib
from test_released import (CAPTIONS, NAMES, close, save_clip, save_siglip,
                           tokenizer, torch_pixels)

STEPS = ("--config.total_steps=20", "--config.batch_size=16",
         "--config.data.name=shapes_captions/tiny",
         "--config.log_every_steps=10", "--config.checkpoint_every_steps=20",
         "--config.eval.probes=()", "--config.optim.warmup_steps=2",
         "--config.optim.lr.image=1e-3", "--config.optim.lr.text=1e-3",
         "--config.optim.lr.other=1e-3")


def train_released(data_dir, path, workdir, *extra):
  result = run_module(
      "cliplite_jax.main", f"--config=configs/released.py:path={path}",
      f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *STEPS,
      *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def embeddings(workdir):
  """The run's embeddings of the photos (uint8, evaluation's crop) and
  captions, unit length, and the normalised pixels they came from."""
  model = inference.load(str(workdir))
  pixels = np.stack([augment.center_crop_resize(photos._pixels(n),
                                                model.image_size)
                     for n in NAMES])
  img = model.encode_image_batch(pixels)["embeddings"]
  txt = model.encode_texts(CAPTIONS)
  ids, mask = text_lib.tokenize(model._tokenizer, [
      text_lib.clean_caption(c) for c in CAPTIONS])
  stats = augment.pixel_stats(model.config)
  return img, txt, ids, mask, np.asarray(augment.normalize(pixels, stats))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_import_train_export_then_from_pretrained(tiny_data_dir, tmp_path,
                                                  family):
  save = save_clip if family == "clip" else save_siglip
  source = save(str(tmp_path / "release"), tokenizer())
  workdir, out = tmp_path / "run", tmp_path / "hf"
  objective = "infonce" if family == "clip" else "sigmoid"
  train_released(tiny_data_dir, source, workdir,
                 f"--config.loss.name={objective}")
  result = run_module("cliplite_jax.export_hf", f"--workdir={workdir}",
                      f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  cls = transformers.CLIPModel if family == "clip" else transformers.SiglipModel
  assert f"as a transformers {cls.__name__}" in result.stdout
  img, txt, ids, mask, pixels = embeddings(workdir)
  hf, info = cls.from_pretrained(str(out), output_loading_info=True)
  hf.eval()
  assert not any(info.values()), info  # every tensor fits, none missing
  text_mask = torch.tensor(mask) if family == "clip" else None
  with torch.no_grad():
    got_img = hf.get_image_features(
        pixel_values=torch_pixels(pixels)).pooler_output.numpy()
    got_txt = hf.get_text_features(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=text_mask).pooler_output.numpy()
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  close(unit(got_img), img)
  close(unit(got_txt), txt)
  # Training moved the weights away from the release's.
  release = cls.from_pretrained(source).eval()
  with torch.no_grad():
    before = release.get_image_features(
        pixel_values=torch_pixels(pixels)).pooler_output.numpy()
  assert np.max(np.abs(unit(before) - img)) > 1e-3
  # The tokenizer travels: transformers tokenises as the run did.
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
  encoded = hf_tok([text_lib.clean_caption(c) for c in CAPTIONS],
                   padding="max_length", truncation=True,
                   max_length=ids.shape[1])
  np.testing.assert_array_equal(np.asarray(encoded["input_ids"]), ids)


@pytest.mark.parametrize("towers,says", [
    ("image=resnet,text=bert", "this run's image tower is 'resnet'"),
    ("image=vit,text=bert", "the text tower (bert"),
])
def test_towers_without_a_transformers_form_are_refused(tmp_path, towers,
                                                         says):
  from cliplite_jax import config_io
  workdir = tmp_path / "run"
  workdir.mkdir()
  config_io.save(config_io.load_file(f"{REPO}/configs/default.py:{towers}"),
                 str(workdir))
  result = run_module("cliplite_jax.export_hf", f"--workdir={workdir}",
                      f"--out={tmp_path / 'hf'}")
  assert result.returncode == 1
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("cliplite_jax.export_hf: error: ") and says in line
  assert not os.path.exists(tmp_path / "hf")


def test_evaluate_scores_a_released_model_without_training(tiny_data_dir,
                                                           tmp_path):
  source = save_clip(str(tmp_path / "release"), tokenizer())
  workdir = tmp_path / "scores"  # new: nothing trained
  result = run_module(
      "cliplite_jax.evaluate",
      f"--config=configs/released.py:path={source},data=shapes_captions/tiny",
      f"--workdir={workdir}", f"--config.data.data_dir={tiny_data_dir}",
      "--config.eval.probes=('retrieval','zeroshot')")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "scoring the released weights (step 0)" in result.stdout
  scores = json.loads((workdir / "eval" / "step_0.json").read_text())
  assert "retrieval/shapes_captions/i2t_r1" in scores
  assert not (workdir / "checkpoints").exists()


def test_lit_run_exports_its_towers_and_evaluates_with_its_config(
    tiny_data_dir, tmp_path):
  """LiT: SigLIP's image tower locked, a CLIP text tower trained, under
  CLIP-Lite's heads: the towers export alone, each as its own transformers
  class (the image tower's giving the run's features), with one line
  saying why; evaluate re-adopts the release from the config the run was
  trained with."""
  source = save_siglip(str(tmp_path / "release"), tokenizer())
  workdir, out = tmp_path / "lit", tmp_path / "hf"
  config = f"--config=configs/lit_jsd.py:image={source}"
  result = run_module(
      "cliplite_jax.main", config, f"--workdir={workdir}",
      f"--config.data.data_dir={tiny_data_dir}", *STEPS[1:],
      "--config.total_steps=2", "--config.checkpoint_every_steps=2",
      "--config.optim.warmup_steps=1")
  assert result.returncode == 0, result.stderr[-3000:]
  result = run_module("cliplite_jax.export_hf", f"--workdir={workdir}",
                      f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  line, = result.stdout.strip().splitlines()
  assert "the towers alone" in line and "MILinearBlock" in line
  assert "SiglipVisionModel" in line and "CLIPTextModel" in line
  model = inference.load(str(workdir))
  pixels = np.stack([augment.center_crop_resize(photos._pixels(n),
                                                model.image_size)
                     for n in NAMES])
  vision = transformers.SiglipVisionModel.from_pretrained(
      str(out / "vision_model")).eval()
  with torch.no_grad():
    got = vision(pixel_values=torch_pixels(np.asarray(augment.normalize(
        pixels, augment.pixel_stats(model.config))))).pooler_output.numpy()
  close(got, model.encode_image_batch(pixels)["features"])
  transformers.CLIPTextModel.from_pretrained(str(out / "text_model"))
  assert os.path.exists(out / "text_model" / "tokenizer.json")
  result = run_module("cliplite_jax.evaluate", config, f"--workdir={workdir}",
                      f"--config.data.data_dir={tiny_data_dir}",
                      "--config.eval.probes=('gap',)")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "evaluation at step 2" in result.stdout


def test_an_unreadable_release_is_one_line_and_writes_nothing(tmp_path):
  source = save_clip(str(tmp_path / "release"), tokenizer())
  weights = os.path.join(source, "model.safetensors")
  with open(weights, "rb") as f:
    data = f.read()
  with open(weights, "wb") as f:
    f.write(data[:len(data) // 2])  # truncated
  workdir = tmp_path / "run"
  result = run_module("cliplite_jax.main",
                      f"--config=configs/released.py:path={source}",
                      f"--workdir={workdir}")
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("cliplite_jax.main: error: the initial weights")
  assert "Traceback" not in result.stderr
  assert not workdir.exists()
