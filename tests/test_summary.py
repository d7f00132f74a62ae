"""The start-up summary's numbers against the model and the dataset."""
import jax
import pytest

from cliplite_jax.models import cliplite
from cliplite_jax.training import parallel, state as state_lib, summary
from conftest import quick_init


def _sizes(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@pytest.fixture
def params(tiny):
  model = cliplite.build(tiny)
  return quick_init(model, {"params": jax.random.key(0),
                            "prior": jax.random.key(1),
                            "dropout": jax.random.key(2)},
                    *state_lib.dummy_inputs(tiny), train=False)["params"]


def test_parameter_counts_per_tower_frozen_and_the_startup_lines(tiny,
                                                                params):
  image = _sizes(params[cliplite.IMAGE_TOWER])
  text = _sizes(params[cliplite.TEXT_TOWER])
  heads = _sizes(params) - image - text
  assert heads > 0
  counts = summary.parameter_counts(tiny, params)
  assert [counts[k]["total"] for k in ("image", "text", "heads", "all")] == [
      image, text, heads, image + text + heads]
  assert counts["all"]["frozen"] == 0
  tiny.model.text.train_last_layers = 0  # the whole text tower frozen
  assert summary.parameter_counts(tiny, params)["text"]["frozen"] == text
  tiny.model.text.train_last_layers = 1  # its one layer (and pooler) train
  text_tower = params[cliplite.TEXT_TOWER]
  trained = (_sizes(text_tower["layer_0"])  # mean pooling: no pooler
             + _sizes(text_tower.get("pooler", {})))
  assert 0 < trained < text  # the embeddings stay frozen
  counts = summary.parameter_counts(tiny, params)
  assert counts["text"]["trainable"] == trained
  assert counts["all"]["trainable"] == image + heads + trained

  # The start-up lines: rows, steps and epochs, devices, the resume point.
  tiny.model.text.train_last_layers = -1
  tiny.accum_steps = 2
  tiny.total_steps = 100
  lines = summary.startup_lines(tiny, params, parallel.make_mesh(4),
                                "/tmp/w", 40, num_examples=250)
  text = "\n".join(lines)
  # 250 examples hold 15 whole batches of 16: 240 a epoch.
  assert "100 steps = 6.7 epochs" in text
  assert "batch: 16 global, 4 per device, 2 per micro-batch" in text
  assert "devices: 4 cpu on 1 host(s), mesh data 4 × fsdp 1" in text
  assert "workdir: /tmp/w (resuming at step 40)" in text
  total = _sizes(params)
  assert f"{total / 1e6:.2f}M parameters" in text or f"{total} parameters" in text
  assert summary.epoch_examples(250, tiny) == 240
