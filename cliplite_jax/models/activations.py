"""The transformer towers' MLP nonlinearities, by config name, and their
Hugging Face `hidden_act` names."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """The exact GELU, x · Φ(x) = x (1 + erf(x / √2)) / 2, in x's dtype.

  The formula of PyTorch's and Hugging Face's `gelu`. `jax.nn.gelu`'s exact
  form goes through erfc, which XLA's CPU backend expands into a much longer
  branchy polynomial; the two agree to 1e-6 absolute.
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def quick_gelu(x: jnp.ndarray) -> jnp.ndarray:
  """OpenAI CLIP's x · σ(1.702 x), in x's dtype."""
  return x * jax.nn.sigmoid(1.702 * x)


def gelu_tanh(x: jnp.ndarray) -> jnp.ndarray:
  """The tanh approximation of GELU (PyTorch's gelu(approximate="tanh"),
  HF's gelu_pytorch_tanh / gelu_new), SigLIP's activation."""
  return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "quick_gelu": quick_gelu, "gelu": gelu, "gelu_tanh": gelu_tanh}
# Hugging Face's `hidden_act` → ours, and ours → the name exports write.
FROM_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu",
           "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu",
         "gelu_tanh": "gelu_pytorch_tanh"}
