"""The GPU check's pieces, on CPU: both sides of the image-tower benchmark see
the same pixels and train, a ViT's from the same weights to the same first
loss, and bench/train_step.py's JSON line feeds bench/gpu_report.py's
table."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cliplite_jax import config_io  # noqa: E402

from cliplite_jax.training import parallel
from cliplite_jax.data import augment  # noqa: E402
from cliplite_jax.models import hf_vision  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
import gpu_report  # noqa: E402
import image_tower  # noqa: E402
import torch_cliplite  # noqa: E402
import train_step  # noqa: E402

CLASSES = 10


def tiny_config(name="default.py"):
  c = config_io.load_file(os.path.join(REPO, "configs", name))
  c.data.image_size, c.batch_size = 32, 8
  return c


def tiny_vit_config():
  """configs/vit_demo.py's ViT-Ti/16 cut to 1 block: a 2 × 2 grid at 32 px."""
  c = tiny_config("vit_demo.py")
  c.model.image.depth = 1
  return c


@pytest.mark.parametrize("variant", ["eager", "eager_channels_last"])
def test_torch_pixels_are_jax_pixels(variant):
  images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), np.uint8)
  setup = torch_cliplite.Variant(tiny_config(), variant, "cpu")
  theirs = setup.pixels(torch.from_numpy(images)).numpy()
  ours = np.asarray(augment.normalize(images))
  np.testing.assert_allclose(theirs.transpose(0, 2, 3, 1), ours, rtol=1e-5,
                             atol=1e-5)


def test_jax_image_tower_fits_a_fixed_batch():
  config = tiny_config()
  mesh = parallel.make_mesh()
  step, state, batch = image_tower.make_step(config, mesh, CLASSES)
  losses = []
  for _ in range(8):
    state, loss = step(state, batch)
    losses.append(float(loss))
  # Cross-entropy of a fresh classifier is near log(classes); then SGD fits
  # the 8 images.
  assert abs(losses[0] - math.log(CLASSES)) < 1.0
  assert losses[-1] < 0.5 * losses[0]
  assert jax.tree.leaves(state)[0].dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16: autocast
def test_torch_image_tower_fits_a_fixed_batch(dtype):
  config = tiny_config()
  config.model.dtype = dtype
  batch = image_tower.random_batch(config, CLASSES)
  torch.manual_seed(0)
  step = torch_cliplite.make_image_tower_step(
      config, "eager", "cpu", CLASSES,
      **image_tower.torch_setup(config, CLASSES))
  inputs = torch.from_numpy(batch["images"]), torch.from_numpy(
      batch["labels"]).long()
  losses = [step(*inputs) for _ in range(8)]
  assert abs(losses[0] - math.log(CLASSES)) < 1.0
  assert losses[-1] < 0.5 * losses[0]


def test_vit_tower_starts_equal_on_both_sides():
  """PyTorch's CLIPVisionModel holds JAX's initial weights exactly, so the
  first step's loss is the same; then both fit the batch (AdamW)."""
  config = tiny_vit_config()
  mesh = parallel.make_mesh()
  step, state, batch = image_tower.make_step(config, mesh, CLASSES)
  initial = hf_vision.as_numpy(state[0])  # before the step donates it
  ours = []
  for _ in range(4):
    state, loss = step(state, batch)
    ours.append(float(loss))
  setup = image_tower.torch_setup(config, CLASSES)
  assert setup["optimizer"][0] == "adamw"
  torch_step = torch_cliplite.make_image_tower_step(
      config, "eager", "cpu", CLASSES, **setup)
  pixels = image_tower.random_batch(config, CLASSES)  # what JAX's batch holds
  inputs = torch.from_numpy(pixels["images"]), torch.from_numpy(
      pixels["labels"]).long()
  theirs = [torch_step(*inputs) for _ in range(4)]
  # The state dict loaded strictly; read back, it is JAX's tower (the patch
  # bias, absent in HF, is zero at init and folds into the positions).
  back = hf_vision.clip_vision_params(
      {k[len("tower."):]: v for k, v in setup["weights"].items()
       if k.startswith("tower.")}, num_layers=1)
  jax.tree.map(np.testing.assert_array_equal, back, initial["tower"])
  assert abs(theirs[0] - math.log(CLASSES)) < 1.0
  assert theirs[0] == pytest.approx(ours[0], rel=1e-5)
  assert not train_step.loss_mismatch(config, "image_tower", ours[0],
                                      theirs[0])
  assert ours[-1] < 0.5 * ours[0] and theirs[-1] < 0.5 * theirs[0]


def test_loss_guard_only_where_weights_are_shared():
  vit, resnet = tiny_vit_config(), tiny_config()
  assert "not JAX's 2" in train_step.loss_mismatch(vit, "image_tower", 2.0,
                                                   2.01)
  assert train_step.loss_mismatch(vit, "image_tower", 2.0, 2.0001) is None
  vit.model.dtype = "bfloat16"  # a wider tolerance
  assert train_step.loss_mismatch(vit, "image_tower", 2.0, 2.01) is None
  # Each side's own initial weights: nothing to compare.
  assert train_step.loss_mismatch(resnet, "image_tower", 2.0, 3.0) is None
  assert train_step.loss_mismatch(vit, "step", 2.0, 3.0) is None


@pytest.mark.parametrize("preset,overrides", [
    ("demo", []), ("vit_demo", ["--set", "model.image.depth=1"])])
def test_train_step_json_line_makes_the_report_row(tmp_path, preset,
                                                   overrides):
  results = tmp_path / "results.jsonl"
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, "bench", "train_step.py"),
       f"--preset={preset}", "--part=image_tower", "--set",
       "data.image_size=32", "--set", "batch_size=8", *overrides,
       "--steps=1", "--rounds=1", "--torch_variants=eager",
       f"--json={results}"],
      capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  record, = [json.loads(line) for line in results.read_text().splitlines()]
  assert (record["part"], record["batch"]) == ("image_tower", 8)
  assert record["same_weights"] == (preset == "vit_demo")
  if record["same_weights"]:
    assert record["first_loss"]["eager"] == pytest.approx(
        record["first_loss"]["jax"], rel=1e-5)
  assert record["torch_fastest"] == "eager"
  assert record["jax_over_torch"] == pytest.approx(
      record["torch_ms"]["eager"] / record["jax_ms"])
  assert record["jax_images_per_s"] == pytest.approx(
      8 / record["jax_ms"] * 1e3)
  row = gpu_report.table([record]).splitlines()[-1].split(" | ")
  assert row[0] == f"| {preset} image_tower"
  assert row[1].startswith("data.image_size=32 batch_size=8")  # last wins
  assert float(row[-1].rstrip(" |")) == pytest.approx(
      record["jax_over_torch"], abs=0.005)


def test_torch_step_under_autocast_keeps_the_loss_in_float32():
  """As the JAX model under bfloat16: towers and heads in bf16, the critic,
  the JSD and the priors in float32."""
  config = tiny_config()
  config.model.dtype = "bfloat16"
  torch.manual_seed(0)
  model = torch_cliplite.CLIPLite(config)
  setup = torch_cliplite.Variant(config, "eager", "cpu")
  batch = np.random.default_rng(0)
  images = torch.from_numpy(batch.integers(0, 256, (4, 32, 32, 3), np.uint8))
  ids = torch.from_numpy(batch.integers(5, 100, (4, 16)))
  mask = torch.ones_like(ids)
  model.eval()  # no dropout; the priors' noise is seeded below
  torch.manual_seed(1)
  with setup.autocast:
    loss = model(setup.pixels(images), ids, mask, 0.1)
  assert loss.dtype == torch.float32
  torch.manual_seed(1)
  exact = model(setup.pixels(images), ids, mask, 0.1)  # float32 throughout
  assert abs(loss.item() - exact.item()) < 0.05
