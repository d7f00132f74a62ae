"""CLIP-Lite image–text pretraining in JAX/Flax."""
import os

# TensorFlow is only used by TFDS (dataset building, TensorBoard events); its
# C++ start-up chatter, and XLA's compile-time warnings (jaxlib reads the same
# variable), would drown the training log. Set before jax or TF load.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
