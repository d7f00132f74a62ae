"""The image tower in PyTorch: exported weights give our pooled features.

The PyTorch side is `cliplite_jax.torch_models.ResNet`, which keeps
torchvision's module names and forward pass, and `torchvision.models.resnetN`
itself, which loads the same weights strictly. Both come with the test
extra: outside CI a missing one skips its tests, under CI (CI=true) it fails
them (`conftest.require`).
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import quick_init, require, run_module

torch = require("torch")

from cliplite_jax import run_dir  # noqa: E402
from cliplite_jax import config_io, export_image, torch_models  # noqa: E402
from cliplite_jax.data import augment  # noqa: E402
from cliplite_jax.models import cliplite, resnet, torch_layout  # noqa: E402
import photos  # noqa: E402


def _photo_batch(size: int) -> np.ndarray:
  """Four real photographs, centre-cropped: uint8 [4, size, size, 3]."""
  return np.stack([augment.center_crop_resize(photos._pixels(n), size)
                   for n in ("astronaut", "coffee", "chelsea", "rocket")])


def _trained_looking(variables, seed: int = 0):
  """`variables` with every BatchNorm's scale, bias and running statistics
  drawn away from their initial 1 / 0 (so that a swapped or dropped
  statistic shows)."""
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']") or name.endswith("['scale']"):
      return rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    if name.endswith("['mean']") or name.endswith("['bias']"):
      return rng.normal(0.0, 0.2, x.shape).astype(np.float32)
    return np.asarray(x)
  return jax.tree_util.tree_map_with_path(draw, variables)


def _torch_features(model, images: np.ndarray) -> np.ndarray:
  """`model` in no-grad mode on uint8 images [N, S, S, 3], normalised as
  the export says and laid out NCHW: float32 [N, F]."""
  x = torch.from_numpy(np.array(augment.normalize(images))).permute(0, 3, 1, 2)
  with torch.no_grad():
    return model(x.contiguous()).numpy()


@functools.lru_cache(maxsize=None)
def _exported(depth: int, width: float, size: int):
  """A ResNet with drawn BatchNorm values, on `_photo_batch(size)`: (images
  uint8 [4, size, size, 3], our pooled features float32 [4, F], the export's
  state_dict {name: torch tensor, float32; int64 counters = 7}). Cached:
  the PyTorch ResNet and torchvision tests share one computation."""
  tower = resnet.ResNet(depth=depth, width=width)
  images = _photo_batch(size)
  variables = _trained_looking(quick_init(
      tower, jax.random.key(depth), jnp.zeros((1, size, size, 3)),
      train=False))
  ours = np.asarray(jax.jit(lambda v, x: tower.apply(
      v, augment.normalize(x), train=False))(variables, images))
  assert ours.shape == (4, tower.num_features)
  # The features differ between photos: the comparisons are not of constants.
  assert np.abs(ours[0] - ours[1]).max() > 1e-2 * np.abs(ours).max()
  weights = {k: torch.from_numpy(v) for k, v in torch_layout.resnet_state_dict(
      variables["params"], variables["batch_stats"], depth, 7).items()}
  return images, ours, weights


def _load_and_compare(model, depth: int, width: float, size: int) -> None:
  """Loads the export into `model` strictly and checks its features."""
  images, ours, weights = _exported(depth, width, size)
  # strict: the same names, no key missing or left over, the same shapes.
  result = model.load_state_dict(weights, strict=True)
  assert not result.missing_keys and not result.unexpected_keys
  theirs = _torch_features(model.eval(), images)
  assert theirs.shape == ours.shape
  np.testing.assert_allclose(theirs, ours, rtol=1e-4,
                             atol=1e-4 * np.abs(ours).max())


@pytest.mark.parametrize("depth,width,size", [
    (18, 1.0, 64), (50, 1.0, 64),
    # CI time: the width multiplier also runs in the CLI test's ResNet-18.
    pytest.param(50, 0.25, 48, marks=pytest.mark.slow)])
def test_exported_tower_gives_our_pooled_features(depth, width, size):
  """`torch_models.ResNet` loads the export strictly and gives our pooled
  features on real photographs."""
  _load_and_compare(torch_models.ResNet(depth, width), depth, width, size)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_loads_the_export_strictly(depth):
  """torchvision's own `resnetN()` (fc → Identity) loads the width-1.0
  export with strict=True and gives our pooled features."""
  tv = require("torchvision")
  model = getattr(tv.models, f"resnet{depth}")()
  model.fc = torch.nn.Identity()
  _load_and_compare(model, depth, 1.0, 64)


def test_torchvision_names_at_width_one():
  """The export's names and shapes are exactly torchvision's (fc aside),
  for every depth."""
  tv = require("torchvision").models
  for depth in resnet.LAYOUTS:
    theirs = getattr(tv, f"resnet{depth}")().state_dict()
    ours = torch_models.ResNet(depth).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {
        k: tuple(v.shape) for k, v in theirs.items()
        if not k.startswith("fc.")}


def test_export_cli_round_trip(eight_step_run, tmp_path):
  """`export_image` on a trained run: the PyTorch tower and heads give the
  checkpoint's features and embeddings; a second export into the same
  directory is refused."""
  out = str(tmp_path / "exported")
  # A folder of the user's with a name like a staging folder's is left be.
  os.makedirs(out + ".partial")
  open(os.path.join(out + ".partial", "mine.txt"), "w").close()
  result = run_module("cliplite_jax.export_image",
                      f"--workdir={eight_step_run}", f"--out={out}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "cliplite_jax.torch_models.ResNet(18, 0.125)" in result.stdout
  info = torch_models.read_export(out)
  assert info["step"] == 8 and info["image_tower"]["torchvision"] is None
  assert set(info["files"]) == set(os.listdir(out)) - {"export.json"}
  assert sorted(os.listdir(tmp_path)) == ["exported", "exported.partial"]
  assert os.listdir(out + ".partial") == ["mine.txt"]

  config = config_io.load_saved(eight_step_run)
  _, model, variables, _, _ = run_dir.restore(eight_step_run, config)
  size = info["preprocess"]["image_size"]
  images = _photo_batch(size)
  features, embeddings = model.apply(variables, augment.normalize(images),
                                     method=cliplite.CLIPLite.encode_image)
  tower = torch_models.load_image_tower(out)
  heads = torch_models.load_heads(out)
  theirs = _torch_features(tower, images)
  np.testing.assert_allclose(theirs, features, rtol=1e-4, atol=1e-5)
  with torch.no_grad():
    projected = heads["image_head"](torch.from_numpy(theirs)).numpy()
  np.testing.assert_allclose(projected, embeddings, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(heads["scale"]),
                             np.exp(float(variables["params"]["log_scale"])),
                             rtol=1e-6)
  # The .pth twin holds the same tensors.
  pth = torch.load(os.path.join(out, "image_tower.pth"))
  assert all(torch.equal(pth[k], v) for k, v in tower.state_dict().items())

  # A second export into it is refused before anything is restored.
  with pytest.raises(config_io.UserError, match="not an empty directory"):
    export_image.check_out(out)
  with pytest.raises(config_io.UserError, match="empty"):
    export_image.check_out("")
