"""Released CLIP / SigLIP / open_clip models: what an import gives equals the
reference implementation on real photographs and captions, scoring a
released model, and the config a run of one saves.

The references are transformers' `CLIPModel` / `SiglipModel` and
open_clip's `CLIP`, built at random initialisation from small configs and
saved the way their releases are (nothing is downloaded)."""
import json
import os

import numpy as np
import pytest
import torch
import transformers

import photos
from cliplite_jax import config_io, features, run_dir
from cliplite_jax.data import augment, clip_tokenizer, text as text_lib
from cliplite_jax.models import heads, hf_bert, release_files, released

VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=24)
CAPTIONS = [c for captions in photos.CAPTIONS.values() for c in captions]
NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokenizer():
  """CLIP's BPE trained on the photos' captions (end token: the last id)."""
  return clip_tokenizer.train_clip_bpe(CAPTIONS, 400)


def save_clip(out: str, tok) -> str:
  """A transformers CLIPModel directory as a release is: weights, config,
  tokenizer.json, preprocessor_config.json."""
  torch.manual_seed(0)
  end, start = (tok.token_to_id(t) for t in (clip_tokenizer.END,
                                             clip_tokenizer.START))
  config = transformers.CLIPConfig(
      text_config=dict(TEXT, vocab_size=tok.get_vocab_size(),
                       eos_token_id=end, bos_token_id=start, pad_token_id=0),
      vision_config=VISION, projection_dim=40)
  model = transformers.CLIPModel(config)
  with torch.no_grad():
    model.logit_scale.fill_(3.1)
  model.save_pretrained(out)
  tok.save(os.path.join(out, "tokenizer.json"))
  with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
    json.dump({"image_mean": [0.4, 0.45, 0.5], "image_std": [0.2, 0.25, 0.3]},
              f)
  return out


def save_siglip(out: str, tok) -> str:
  """A transformers SiglipModel directory; its tokenizer pads with the end
  token (as SigLIP's pads with </s>), named in tokenizer_config.json."""
  torch.manual_seed(1)
  config = transformers.SiglipConfig(
      text_config=dict(TEXT, vocab_size=tok.get_vocab_size(),
                       projection_size=VISION["hidden_size"],
                       bos_token_id=None,
                       eos_token_id=tok.token_to_id(clip_tokenizer.END),
                       pad_token_id=tok.token_to_id(clip_tokenizer.END)),
      vision_config=VISION)
  model = transformers.SiglipModel(config)
  with torch.no_grad():
    model.logit_scale.fill_(2.3)
    model.logit_bias.fill_(-6.5)
  model.save_pretrained(out)
  tok.save(os.path.join(out, "tokenizer.json"))
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump({"pad_token": clip_tokenizer.END}, f)
  return out


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
  tok = tokenizer()
  root = tmp_path_factory.mktemp("releases")
  return {"clip": save_clip(str(root / "clip"), tok),
          "siglip": save_siglip(str(root / "siglip"), tok)}


def released_config(path: str, **fields):
  config = config_io.load_file(
      os.path.join(HERE, "configs", f"released.py:path={path}"))
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def images(size: int) -> np.ndarray:
  """The photos, centre-cropped and resized as evaluation does: uint8."""
  return np.stack([augment.center_crop_resize(photos._pixels(n), size)
                   for n in NAMES])


def ours(config):
  """(image embeddings, text embeddings, logits, ids, mask, pixels) of the
  adopted, untrained `config` through the path `evaluate` scores with."""
  _, model, variables, tok, mesh = run_dir.initial(config)
  image_fn, text_fn = features.make_encoders(
      model, variables, mesh, pixel_stats=augment.pixel_stats(config))
  pixels = images(config.data.image_size)
  img = np.asarray(image_fn({"images": pixels})["embeddings"])
  ids, mask = text_lib.tokenize(tok, [text_lib.clean_caption(c)
                                      for c in CAPTIONS])
  txt = np.asarray(text_fn(ids, mask))
  params = variables["params"]
  normalized = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  logits = (np.exp(float(params["log_scale"]))
            * normalized(img) @ normalized(txt).T)
  if "logit_bias" in params:
    logits = logits + float(params["logit_bias"])
  return img, txt, logits, ids, mask, augment.normalize(pixels,
                                                        augment.pixel_stats(
                                                            config))


def close(got, want, tol=1e-4):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  assert err <= tol, err


def torch_pixels(pixels) -> torch.Tensor:
  return torch.tensor(np.asarray(pixels)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_imported_model_equals_transformers(releases, family):
  objective = "infonce" if family == "clip" else "sigmoid"  # SigLIP's bias
  config = released_config(releases[family], **{"loss.name": objective})
  lines = released.adopt(config)
  assert len(lines) == 4  # image, text, heads, logit scale
  assert lines[-1].startswith("logit scale")  # the release's, its objective
  img, txt, logits, ids, mask, pixels = ours(config)
  reference = (transformers.CLIPModel if family == "clip"
               else transformers.SiglipModel).from_pretrained(
                   releases[family]).eval()
  # SigLIP's tokenizer returns no attention mask: the tower attends to the
  # padding, as it was trained.
  text_mask = torch.tensor(mask, dtype=torch.long) if family == "clip" else None
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=text_mask,
                    pixel_values=torch_pixels(pixels))
  close(img, out.image_embeds.numpy() * np.linalg.norm(img, axis=1,
                                                       keepdims=True))
  with torch.no_grad():
    want_img = reference.get_image_features(
        pixel_values=torch_pixels(pixels)).pooler_output.numpy()
    want_txt = reference.get_text_features(
        input_ids=torch.tensor(ids, dtype=torch.long),
        attention_mask=text_mask).pooler_output.numpy()
  close(img, want_img)
  close(txt, want_txt)
  close(logits, out.logits_per_image.numpy())
  kind = heads.head_kind(config.model)
  if family == "clip":
    assert config.model.pixel_mean == (0.4, 0.45, 0.5)
    assert kind == "linear" and config.model.proj_dim == 40
  else:
    assert config.model.pixel_mean == (0.5, 0.5, 0.5)
    assert kind == "identity"
    # Padded with the end token, which the tower attends to.
    end = tokenizer().token_to_id(clip_tokenizer.END)
    assert (ids[mask == 0] == end).all()


def test_a_released_tower_under_fresh_heads(releases):
  config = released_config(releases["clip"])
  config.model.head = "milinear"
  config.model.init_from = ""
  config.model.image.init_from = releases["clip"]
  config.model.image.locked = True
  lines = released.adopt(config)
  assert len(lines) == 1 and config.model.text.name == "clip"
  assert config.model.image.locked and config.model.head == "milinear"
  loaded = released.initial_variables(config, has_bias=False)["params"]
  assert set(loaded) == {"image_encoder"}
  reference = transformers.CLIPModel.from_pretrained(releases["clip"]).eval()
  pixels = augment.normalize(images(32), augment.pixel_stats(config))
  from cliplite_jax.models import towers
  tower = towers.build_image(config.model.image, np.float32, False)
  got = tower.apply({"params": loaded["image_encoder"]}, pixels, train=False)
  with torch.no_grad():
    want = reference.vision_model(
        pixel_values=torch_pixels(pixels)).pooler_output.numpy()
  close(got, want)


def test_bad_sources_are_one_line_errors(tmp_path, releases):
  config = released_config(str(tmp_path / "missing"))
  with pytest.raises(config_io.UserError, match="does not exist"):
    released.adopt(config)
  (tmp_path / "bert").mkdir()
  (tmp_path / "bert" / "config.json").write_text(
      json.dumps({"model_type": "bert"}))
  with pytest.raises(config_io.UserError, match="neither a CLIP nor a SigLIP"):
    released.adopt(released_config(str(tmp_path / "bert")))
  with pytest.raises(config_io.UserError, match="model.init_arch"):
    released.adopt(released_config(
        os.path.join(releases["clip"], "model.safetensors")))
  config = released_config(releases["clip"])
  config.model.init_from = ""
  with pytest.raises(config_io.UserError, match="head='released'"):
    released.adopt(config)
  with pytest.raises(hf_bert.PretrainedError, match="no weights"):
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(
        json.dumps({"model_type": "clip"}))
    released.read(str(tmp_path / "empty"))


# --- open_clip ---

def openclip_model(config: dict, seed: int):
  """open_clip's CLIP from a model-config dict, random weights (the
  projections too: open_clip initialises them with small normals)."""
  import open_clip
  torch.manual_seed(seed)
  model = open_clip.model.CLIP(**config).eval()
  with torch.no_grad():
    model.logit_scale.fill_(2.9)
  return model


def openclip_reference(model, ids, pixels):
  with torch.no_grad():
    img = model.encode_image(torch_pixels(pixels)).numpy()
    txt = model.encode_text(torch.tensor(ids, dtype=torch.long)).numpy()
    img_n, txt_n, scale = model(torch_pixels(pixels),
                                torch.tensor(ids, dtype=torch.long))[:3]
  return img, txt, (scale * img_n @ txt_n.T).numpy()


def small_openclip(vocab: int) -> dict:
  return {"embed_dim": 40, "quick_gelu": True,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 64,
                         "patch_size": 8, "head_width": 16},
          "text_cfg": {"context_length": 24, "vocab_size": vocab,
                       "width": 48, "heads": 4, "layers": 2}}


@pytest.mark.parametrize("layout", ["hub_directory", "file_and_json"])
def test_imported_openclip_equals_openclip(tmp_path, layout):
  from safetensors.torch import save_file
  tok = tokenizer()
  spec = small_openclip(tok.get_vocab_size())
  model = openclip_model(spec, seed=2)
  if layout == "hub_directory":
    # As open_clip's Hub releases: config with preprocessing, safetensors,
    # tokenizer.json.
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": spec, "preprocess_cfg": {"mean": [0.5, 0.4, 0.3],
                                               "std": [0.3, 0.2, 0.25]}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "oc" / "open_clip_model.safetensors"))
    tok.save(str(tmp_path / "oc" / "tokenizer.json"))
    config = released_config(str(tmp_path / "oc"))
  else:
    # A training checkpoint (`state_dict` under "module." names), its model
    # config as JSON, the tokenizer named by data.tokenizer.
    torch.save({"epoch": 3, "state_dict": {
        f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "epoch_3.pt")
    (tmp_path / "arch.json").write_text(json.dumps(spec))
    tok.save(str(tmp_path / "tokenizer.json"))
    config = config_io.load_file(os.path.join(
        HERE, "configs", f"released.py:path={tmp_path / 'epoch_3.pt'},"
        f"arch={tmp_path / 'arch.json'},"
        f"tokenizer={tmp_path / 'tokenizer.json'}"))
  config.loss.name = "infonce"
  released.adopt(config)
  img, txt, logits, ids, _, pixels = ours(config)
  want = openclip_reference(model, ids, pixels)
  for got, expected in zip((img, txt, logits), want):
    close(got, expected)
  expected_mean = ((0.5, 0.4, 0.3) if layout == "hub_directory"
                   else release_files.CLIP_PIXELS[0])
  assert config.model.pixel_mean == expected_mean


# ~80 s on 2 cores (ViT-B/32 at 224 px, 151M parameters, in both
# frameworks); the small open_clip models above check the same mapping.
@pytest.mark.slow
def test_openclip_vit_b32_by_name_equals_openclip(tmp_path):
  import open_clip
  spec = json.loads(open(os.path.join(
      os.path.dirname(open_clip.__file__), "model_configs",
      "ViT-B-32.json")).read())
  model = openclip_model(spec, seed=3)
  torch.save(model.state_dict(), tmp_path / "vit_b32.bin")
  tokenizer().save(str(tmp_path / "tokenizer.json"))
  config = config_io.load_file(os.path.join(
      HERE, "configs", f"released.py:path={tmp_path / 'vit_b32.bin'},"
      f"arch=ViT-B-32"))
  config.data.tokenizer = str(tmp_path / "tokenizer.json")
  config.loss.name = "infonce"
  released.adopt(config)
  assert (config.model.image.width, config.model.image.depth,
          config.data.image_size) == (768, 12, 224)
  img, txt, logits, ids, _, pixels = ours(config)
  for got, expected in zip((img, txt, logits),
                           openclip_reference(model, ids, pixels)):
    close(got, expected)


def test_openclip_model_configs_by_name_and_the_unsupported():
  from cliplite_jax.models import openclip_map
  rn50 = openclip_map.hf_config(openclip_map.model_config("RN50"))
  assert rn50["vision_config"] == {
      "model_type": openclip_map.MODIFIED_RESNET, "layers": [3, 4, 6, 3],
      "width": 64, "heads": 32, "output_dim": 1024, "image_size": 224}
  b16 = openclip_map.hf_config(openclip_map.model_config("ViT-B-16"))
  assert (b16["vision_config"]["patch_size"],
          b16["vision_config"]["num_attention_heads"]) == (16, 12)
  text = {"context_length": 77, "vocab_size": 49408, "width": 512,
          "heads": 8, "layers": 12}
  with pytest.raises(openclip_map.OpenCLIPError, match="timm image tower"):
    openclip_map.hf_config({"embed_dim": 512, "text_cfg": text, "vision_cfg": {
        "timm_model_name": "convnext_base", "image_size": 224}})
  with pytest.raises(openclip_map.OpenCLIPError, match="Hugging Face text"):
    openclip_map.hf_config({"embed_dim": 512, "vision_cfg": {
        "image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": {"hf_model_name": "xlm-roberta-base"}})
  with pytest.raises(openclip_map.OpenCLIPError, match="no model config"):
    openclip_map.model_config("ViT-Nonexistent")


def test_released_model_scored_on_imagenet_equals_transformers(releases):
  """evaluate's zero-shot of a released CLIP (no training) on mock ImageNet
  against the same zero-shot computed with transformers: CLIP's 80
  templates per class name, prompt embeddings normalised, averaged and
  normalised; labels set so that top-1 is 1/2 and top-5 is 1 by the
  reference's own ranking."""
  from fakes import fake_tfds, jpeg
  from cliplite_jax import evaluate
  from cliplite_jax.data import sources
  config = released_config(releases["clip"])
  config.eval.probes = ("zeroshot",)
  config.eval.batch_size = 4000
  config.data.name, config.eval.split = "imagenet2012", "validation"
  released.adopt(config)
  _, model, variables, tok, mesh = run_dir.initial(config)
  reference = transformers.CLIPModel.from_pretrained(releases["clip"]).eval()
  names, templates = sources.IMAGENET_CLASSES, sources.IMAGENET_TEMPLATES
  prompts = [text_lib.clean_caption(t.format(c)) for c in names
             for t in templates]
  ids, mask = text_lib.tokenize(tok, prompts)
  with torch.no_grad():
    prompt_emb = np.concatenate([reference.get_text_features(
        input_ids=torch.tensor(ids[i:i + 8000], dtype=torch.long),
        attention_mask=torch.tensor(mask[i:i + 8000])).pooler_output.numpy()
        for i in range(0, len(ids), 8000)])
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  classes = unit(unit(prompt_emb).reshape(1000, 80, -1).mean(axis=1))
  size = config.data.image_size
  photographs = [jpeg(augment.center_crop_resize(photos._pixels(n), size))
                 for n in NAMES * 2]
  source = sources.SOURCES["imagenet2012"]
  pixels = np.stack([augment.center_crop_resize(sources.decode(
      source, {"image": p, "label": 0})[0], size) for p in photographs])
  with torch.no_grad():
    image_emb = reference.get_image_features(pixel_values=torch_pixels(
        augment.normalize(pixels, augment.pixel_stats(config)))
    ).pooler_output.numpy()
  ranking = np.argsort(-(unit(image_emb) @ classes.T), axis=1)
  labels = [ranking[i, 0 if i % 2 else 2] for i in range(len(photographs))]

  def imagenet(split):
    return [{"image": p, "label": np.int64(label), "file_name": f"{i}.JPEG"}
            for i, (p, label) in enumerate(zip(photographs, labels))]

  with fake_tfds({"imagenet2012": imagenet}):
    got = evaluate.run_probes(config, model, variables, tok, mesh)
  assert got["zeroshot/imagenet2012/top1"] == pytest.approx(0.5)
  assert got["zeroshot/imagenet2012/top5"] == pytest.approx(1.0)


@pytest.mark.parametrize("data", ["shapes", "coco"])
def test_lit_config_locks_a_released_image_tower_and_trains_text(releases,
                                                                 data):
  from cliplite_jax import validation
  from cliplite_jax.models import cliplite
  from cliplite_jax.training import optim, parallel, state as state_lib
  config = config_io.load_file(os.path.join(
      HERE, "configs", f"lit_jsd.py:image={releases['siglip']},data={data}"))
  released.adopt(config)
  validation.check_train(config, num_devices=1)
  assert config.loss.name == "jsd" and config.model.head == "milinear"
  assert config.model.image.locked and not config.model.text.locked
  assert config.model.image.pool == "map"  # SigLIP's tower, as released
  assert config.data.image_size == VISION["image_size"]
  assert config.data.tokenizer == "bpe"  # the text tower's own, trained
  assert set(released.initial_variables(config, has_bias=False)["params"]) == {
      "image_encoder"}
  model = cliplite.build(config)
  state = state_lib.abstract_state(config, model, optim.build(config),
                                   parallel.make_mesh(1))
  assert optim.locked_towers(config) == (cliplite.IMAGE_TOWER,)
  assert len([k for k in state.model_params["text_encoder"]
              if k.startswith("layer_")]) == config.model.text.layers


def test_imported_openai_resnet_equals_openclip(tmp_path):
  """OpenAI's ResNet CLIP (ModifiedResNet) through open_clip's RN config
  layout, small; BatchNorm statistics drawn away from their init so that
  loading them matters."""
  tok = tokenizer()
  spec = {"embed_dim": 40, "quick_gelu": True,
          "vision_cfg": {"image_size": 64, "layers": [1, 2, 1, 1],
                         "width": 8, "head_width": 32},
          "text_cfg": {"context_length": 24, "vocab_size": tok.get_vocab_size(),
                       "width": 48, "heads": 4, "layers": 2}}
  model = openclip_model(spec, seed=4)
  generator = torch.Generator().manual_seed(5)
  with torch.no_grad():
    for module in model.visual.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0, 0.1, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0, 0.1, generator=generator)
  (tmp_path / "rn").mkdir()
  (tmp_path / "rn" / "open_clip_config.json").write_text(
      json.dumps({"model_cfg": spec}))
  torch.save(model.state_dict(), tmp_path / "rn" / "open_clip_pytorch_model.bin")
  tok.save(str(tmp_path / "rn" / "tokenizer.json"))
  config = released_config(str(tmp_path / "rn"), **{"loss.name": "infonce"})
  released.adopt(config)
  assert config.model.image.name == "clip_resnet"
  assert tuple(config.model.image.layers) == (1, 2, 1, 1)
  img, txt, logits, ids, _, pixels = ours(config)
  for got, expected in zip((img, txt, logits),
                           openclip_reference(model, ids, pixels)):
    close(got, expected)


def test_fresh_heads_and_the_logit_scale_follow_the_objective(releases):
  """Only model.head='released' loads the projections; the logit scale
  (and SigLIP's bias) load only under the objective they were trained
  with."""
  config = released_config(releases["clip"], **{"loss.name": "infonce"})
  config.model.head = "linear"  # CLIP's architecture, fresh
  released.adopt(config)
  loaded = released.initial_variables(config, has_bias=False)["params"]
  assert "image_head" not in loaded and "log_scale" in loaded
  assert float(loaded["log_scale"]) == pytest.approx(3.1)
  config = released_config(releases["siglip"])  # CLIP-Lite's JSD
  lines = released.adopt(config)
  assert "not the release's" in lines[-1] and "sigmoid" in lines[-1]
  loaded = released.initial_variables(config, has_bias=False)["params"]
  assert "log_scale" not in loaded and "logit_bias" not in loaded
  config = released_config(releases["siglip"], **{"loss.name": "sigmoid"})
  released.adopt(config)
  loaded = released.initial_variables(config, has_bias=True)["params"]
  assert float(loaded["logit_bias"]) == pytest.approx(-6.5)


def test_released_heads_need_the_towers_of_their_release(releases):
  config = released_config(releases["clip"])
  config.model.image.init_from = releases["siglip"]
  with pytest.raises(config_io.UserError, match="model.head='milinear'"):
    released.adopt(config)


def test_a_siglip_tokenizer_without_a_pad_token_is_refused(tmp_path,
                                                           releases):
  import shutil
  source = str(tmp_path / "siglip")
  shutil.copytree(releases["siglip"], source)
  os.remove(os.path.join(source, "tokenizer_config.json"))
  config = released_config(source)
  # config.json's text_config.pad_token_id (the end token) stands in.
  lines = released.adopt(config)
  assert f"padded with {clip_tokenizer.END!r}" in lines[1]
  hf = json.load(open(os.path.join(source, "config.json")))
  hf["text_config"]["pad_token_id"] = None
  json.dump(hf, open(os.path.join(source, "config.json"), "w"))
  with pytest.raises(config_io.UserError, match="attends to its padding"):
    released.adopt(released_config(source))


def test_an_unreadable_released_tokenizer_is_one_line(tmp_path, releases):
  import shutil
  source = str(tmp_path / "clip")
  shutil.copytree(releases["clip"], source)
  with open(os.path.join(source, "tokenizer.json"), "w") as f:
    f.write('{"version": "1.0", "model": ')  # cut short
  config = released_config(source)
  released.adopt(config)  # CLIP's padding is masked: not read yet
  with pytest.raises(config_io.UserError,
                     match="not a readable tokenizer.json"):
    run_dir.initial(config)


def test_runs_saved_before_the_released_fields_resume_unchanged(tmp_path):
  """A config.json written before model.head, pixel statistics and
  posemb_grid existed equals today's defaults for them; another value is a
  change."""
  from cliplite_jax.training import guards
  config = config_io.load_file(os.path.join(
      HERE, "configs", "default.py:image=vit,text=clip"))
  old = config.to_dict()
  for key in ("head", "pixel_mean", "pixel_std", "init_from", "init_arch"):
    del old["model"][key]
  for key in ("posemb_grid", "init_from"):
    del old["model"]["image"][key]
  del old["model"]["text"]["init_from"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  guards.check_config_change(config, str(tmp_path), allow=False)
  config.model.pixel_mean = (0.5, 0.5, 0.5)
  with pytest.raises(config_io.UserError, match="model.pixel_mean"):
    guards.check_config_change(config, str(tmp_path), allow=False)
