"""The PyTorch side of bench/train_step.py: each variant of the step (bench/
torch_cliplite.py) in a worker process of its own, on the GPU where PyTorch
sees one, timed there a round at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

TORCH_VARIANTS = ("eager", "eager_channels_last", "compile",
                  "compile_channels_last")  # torch_cliplite.VARIANTS


def torch_device() -> str:
  """"cuda" where PyTorch sees a GPU, else "cpu"."""
  import torch
  return "cuda" if torch.cuda.is_available() else "cpu"


class TorchStep:
  """`part` of `config` in PyTorch (bench/torch_cliplite.py) on its GPU if it
  has one, its inputs already there as JAX's are."""

  def __init__(self, config, batch: dict[str, np.ndarray], variant: str,
               lookahead_every_step: bool, part: str = "step"):
    import torch
    import torch_cliplite
    torch.manual_seed(0)
    device = torch_device()
    if device == "cpu":
      torch.set_num_threads(os.cpu_count())
    if part == "image_tower":
      import image_tower  # JAX's initial weights, for a ViT
      keys = ("images", "labels")
      self.step = torch_cliplite.make_image_tower_step(
          config, variant, device, **image_tower.torch_setup(config))
    else:
      keys = ("images", "input_ids", "attention_mask")
      self.step = torch_cliplite.make_step(config, variant,
                                           lookahead_every_step, device)
    self.inputs = [torch.from_numpy(batch[k]).to(device) if k == "images"
                   else torch.from_numpy(batch[k]).long().to(device)
                   for k in keys]
    # The first call compiles (torch.compile) and allocates; its loss is
    # the initial weights', for the parent's comparison with JAX's.
    self.first_loss = self.run()
    self.run()  # the backward's first call after compiling may still adjust

  def run(self) -> float:
    return self.step(*self.inputs)


class TorchUnavailable(RuntimeError):
  """A PyTorch variant could not be set up or stopped; the message says why."""


PROTOCOL = "@@ "  # marks the worker's replies; other stdout lines are echoed


class TorchProcess:
  """`TorchStep` in a child process, timed there a round at a time."""

  def __init__(self, script: str, argv: list[str], variant: str):
    # The worker's JAX (config, a ViT's initial weights) stays on the CPU:
    # the GPU, where there is one, is PyTorch's alone there.
    self.proc = subprocess.Popen(
        [sys.executable, script, *argv, "--torch_worker",
         f"--torch_variant={variant}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    reply = self._reply()
    if not reply.startswith("ready"):
      self.proc.wait()
      raise TorchUnavailable(reply)
    self.first_loss = float(reply.split()[1])  # the first step's loss

  def _reply(self) -> str:
    """The worker's next reply, echoing what else it prints."""
    for line in self.proc.stdout:
      if line.startswith(PROTOCOL):
        return line[len(PROTOCOL):].strip()
      print(line, end="", flush=True)
    return "failed: the PyTorch worker stopped (see above)"

  def round(self, steps: int) -> list[tuple[float, float]]:
    """`steps` × (wall, kernel CPU) seconds, timed in the child; raises
    TorchUnavailable if a step failed there."""
    try:
      self.proc.stdin.write(f"{steps}\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      raise TorchUnavailable("the PyTorch worker stopped (see above)")
    reply = self._reply()
    if reply.startswith("failed"):
      raise TorchUnavailable(reply)
    return [tuple(t) for t in json.loads(reply)]

  def close(self):
    if self.proc.stdin and not self.proc.stdin.closed:
      try:
        self.proc.stdin.close()
      except BrokenPipeError:
        pass
    self.proc.wait()


def _failure(e: Exception) -> str:
  return f"failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"


def serve_torch_rounds(config, batch: dict[str, np.ndarray], variant: str,
                       lookahead_every_step: bool, part: str) -> None:
  """The child's side of `TorchProcess`: "ready LOSS" (the first step's
  loss; or "failed: why" and exit), then one JSON line per round (or
  "failed: why" and exit), each after PROTOCOL."""
  try:
    step = TorchStep(config, batch, variant, lookahead_every_step, part)
  except Exception as e:  # noqa: BLE001  (reported, and the parent goes on)
    print(PROTOCOL + _failure(e), flush=True)
    return
  print(f"{PROTOCOL}ready {step.first_loss!r}", flush=True)
  for line in sys.stdin:
    try:
      reply = json.dumps([timed(step) for _ in range(int(line))])
    except Exception as e:  # noqa: BLE001  (e.g. out of memory)
      print(PROTOCOL + _failure(e), flush=True)
      return
    print(PROTOCOL + reply, flush=True)


def torch_version() -> str:
  """The installed torch's version, read without importing it here."""
  from importlib import metadata
  try:
    return metadata.version("torch")
  except metadata.PackageNotFoundError:
    return "(not installed)"


def timed(step) -> tuple[float, float]:
  """(wall, kernel CPU) seconds of one `step.run()`.

  Kernel (system) CPU is mostly page faults on freshly mapped buffers: what
  the host-memory setting changes (cliplite_jax/training/host_memory.py).
  """
  cpu, start = os.times(), time.perf_counter()
  step.run()
  wall, after = time.perf_counter() - start, os.times()
  return wall, after.system - cpu.system
