"""CLIP-Lite image–text pretraining in JAX/Flax."""
import os

# TensorFlow is only used by TFDS (dataset building, TensorBoard events); its
# C++ start-up chatter would drown the training log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
