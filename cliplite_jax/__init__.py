"""CLIP-Lite image–text pretraining in JAX/Flax."""
import os

# TensorFlow is only used by TFDS (dataset building, TensorBoard events); its
# C++ start-up chatter, and XLA's compile-time warnings (jaxlib reads the same
# variable), would drown the training log. Set before jax or TF load.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def __getattr__(name):
  # `cliplite_jax.load` without importing jax for every submodule (the
  # command-line programs quiet the native logs before jax loads).
  if name in ("load", "Model"):
    from cliplite_jax import inference
    return getattr(inference, name)
  raise AttributeError(f"module 'cliplite_jax' has no attribute {name!r}")
