"""Test set-up: 4 fake CPU devices (set before jax is imported) and a tiny
`shapes_captions` build shared by the whole session."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from cliplite_jax.data import shapes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data_dir holding shapes_captions/tiny (256/64/128 images)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  shapes.prepare(data_dir, "tiny")
  return data_dir


def tiny_config(data_dir: str):
  """The demo config shrunk to seconds: 32 px, 1-layer text, batch 16."""
  from configs import default
  c = default.get_config()
  c.data.name = "shapes_captions/tiny"
  c.data.data_dir = data_dir
  c.data.image_size = 32
  c.data.num_threads = 0
  c.model.image.width = 0.125
  c.model.text.update(hidden=32, layers=1, heads=2, mlp_dim=64, vocab_size=256)
  c.model.proj_dim = 32
  c.batch_size = 16
  c.total_steps = 6
  c.optim.warmup_steps = 2
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.eval.batch_size = 64
  return c


@pytest.fixture
def tiny(tiny_data_dir):
  return tiny_config(tiny_data_dir)
