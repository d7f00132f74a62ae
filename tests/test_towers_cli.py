"""A ViT + CLIP-text run from the command line (configs/vit_demo.py, tiny):
killed and resumed to the bit, loaded and embedded, and refused by the
exports that have no such tower."""
import os
import random
import signal

import jax
import numpy as np
import pytest

import cliplite_jax
from cliplite_jax import config_io, run_dir
from cliplite_jax.data import augment, text as text_lib
from cliplite_jax.models import cliplite
from conftest import run_module, vit_run_args, wait_for_step
from test_reliability import _final_params, _losses


# The ViT runs keep a weight EMA and train with cluster hard negatives from
# step 3 (centroids refreshed every 2 steps): their kill -9 resume covers
# both states' checkpointing, and what loads them must read the EMA.
KEPT_STATE = ("--config.optim.ema_decay=0.9",
              "--config.loss.negatives=clusters", "--config.loss.clusters.k=2",
              "--config.loss.clusters.start_step=3",
              "--config.loss.clusters.every_steps=2")


@pytest.fixture(scope="module")
def vit_run(tiny_data_dir, tmp_path_factory):
  """An uninterrupted 8-step run of configs/vit_demo.py (tiny ViT + CLIP
  text, the trained byte BPE) with a weight EMA."""
  workdir = str(tmp_path_factory.mktemp("vit") / "run")
  result = run_module("cliplite_jax.main", *vit_run_args(tiny_data_dir,
                                                         workdir, *KEPT_STATE))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "model: image ViT-Ti/8 (width 32, depth 2, heads 2, mlp_dim 64)" in (
      result.stdout), result.stdout
  return workdir


def test_vit_run_killed_at_a_random_step_resumes_bit_exact(
    vit_run, tiny_data_dir, tmp_path):
  seed = int(os.environ.get("KILL_SEED",
                            random.SystemRandom().randrange(1 << 30)))
  kill_at = random.Random(seed).randint(2, 7)
  print(f"KILL_SEED={seed}: killing at step {kill_at}")
  workdir = str(tmp_path / "run")
  process = run_module("cliplite_jax.main",
                       *vit_run_args(tiny_data_dir, workdir, *KEPT_STATE),
                       popen=True)
  wait_for_step(workdir, kill_at, process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  result = run_module("cliplite_jax.main", *vit_run_args(tiny_data_dir,
                                                         workdir, *KEPT_STATE))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _losses(workdir) == _losses(vit_run), (
      f"killed at {kill_at} (KILL_SEED={seed})")
  step, state = _final_params(workdir)
  ref_step, ref_state = _final_params(vit_run)
  assert step == ref_step == 8
  assert state.ema is not None
  np.testing.assert_allclose(  # refreshed: unit rows
      np.linalg.norm(np.asarray(state.centroids), axis=1), 1, rtol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, state, ref_state)


def test_what_loads_a_run_with_an_ema_reads_the_ema(vit_run):
  """restore (evaluate, embed, export, cliplite_jax.load) gives the EMA of
  the checkpoint, not the weights it trained."""
  _, state = _final_params(vit_run)
  config = config_io.load_saved(vit_run)
  _, _, variables, _, _ = run_dir.restore(vit_run, config)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               state.ema)
  differences = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                             state.ema, state.trained_variables)
  assert max(jax.tree.leaves(differences)) > 1e-4


def test_a_vit_run_loads_embeds_and_says_it_has_no_torch_export(
    vit_run, tmp_path):
  model = cliplite_jax.load(vit_run)
  config = config_io.load_saved(vit_run)
  _, module, variables, tokenizer, _ = run_dir.restore(vit_run, config)
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3),
                                             dtype=np.uint8)
  features, embeddings = jax.jit(lambda v, x: module.apply(
      v, augment.normalize(x), method=cliplite.CLIPLite.encode_image))(
          variables, images)
  np.testing.assert_allclose(model.encode_images(images, pooled=True),
                             features, rtol=1e-5, atol=1e-5)
  unit = np.asarray(embeddings) / np.linalg.norm(embeddings, axis=-1,
                                                 keepdims=True)
  np.testing.assert_allclose(model.encode_images(images), unit, atol=2e-5)
  # The run's byte BPE wraps captions in CLIP's start and end tokens, and
  # end-of-text pooling reads the last real one.
  ids, mask = text_lib.tokenize(tokenizer, ["a red circle"])
  last = int(mask[0].sum()) - 1
  assert tokenizer.id_to_token(int(ids[0, last])) == "<|endoftext|>"
  assert model.encode_texts(["a red circle", "two blue squares"]).shape == (
      2, model.embed_dim)
  for command in ("cliplite_jax.export_image", "cliplite_jax.export_text"):
    out = tmp_path / command
    result = run_module(command, f"--workdir={vit_run}", f"--out={out}")
    assert result.returncode == 1
    line, = result.stderr.strip().splitlines()
    assert "which has no" in line and "export yet" in line, line
    assert not out.exists()
