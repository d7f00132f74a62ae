"""Every training objective, found by `config.loss.name`.

An objective is `fn(outputs, loss_config) -> (loss, metrics)` over a model's
output dict: the two-tower `CLIPLite`'s ("img_emb", "txt_emb", ...) or the
M-modality `MultiModal`'s ("embeddings": M arrays [B, D]). `Objective` says
which model it trains and how it must run: on each device's shard
(`device_local`: nothing crosses devices but what the math needs) or on the
global batch (the jitted step gathers what the math reads). All losses are
float32, whatever the model's compute dtype.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from cliplite_jax.objectives import losses, noncontrastive, symile


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective and how it must run.

  fn: (outputs, loss_config[, axis_name]) -> (float32 loss [], metrics).
  device_local: sees one device's shard only (else the global batch).
  rolls: takes each pair's negative from the next row of its (micro-)batch,
    so it needs at least 2 rows there (with 1 the negative is the positive).
  multimodal: trains `models.multimodal.MultiModal` (else `CLIPLite`).
  needs_key: reads outputs["loss_key"], a PRNG key for sampling negatives.
  takes_axis: a device-local fn that takes the mesh axis its devices lie
    on as `axis_name`: to all-reduce something over it (nCLIP's batch
    mean), or to draw apart on each device (cluster negatives).
  priors: the image–text model gets Deep InfoMax prior discriminators
    (`loss.prior_img` / `loss.prior_txt`), weighted by `loss.prior_weight`.
  logit_bias: the image–text model gets a learnable logit bias, started at
    `loss.init_logit_bias` (SigLIP's b).
  prototypes: the image–text model gets nCLIP's prototypes; the objective
    reads `loss.nclip`.
  modality_score: a multimodal objective's critic for zero-shot prediction
    of one modality from the others: "mip" (Symile's) or "pairwise".
  gathers: what crosses devices for the loss (docs/objectives.md's table).
  ring: can run by ring instead (`loss.gather="ring"`: `objectives.ring`,
    nothing gathered); fn then takes the mesh as `ring_mesh`.
  paper: where the objective comes from.
  """
  fn: Callable
  device_local: bool
  rolls: bool = False
  multimodal: bool = False
  needs_key: bool = False
  takes_axis: bool = False
  priors: bool = False
  logit_bias: bool = False
  prototypes: bool = False
  modality_score: str = "mip"
  gathers: str = ""
  ring: bool = False
  paper: str = ""


def _nclip_terms(outputs: dict, cfg, axis_name=None):
  n = cfg.nclip
  return noncontrastive.nclip_loss(
      outputs["img_proto_logits"], outputs["txt_proto_logits"],
      n.student_temperature, n.teacher_temperature, n.me_max_weight,
      axis_name=axis_name)


def nclip_objective(outputs: dict, cfg) -> tuple[jnp.ndarray, dict]:
  """nCLIP alone: no negatives; ME-MAX's [K] batch mean is global."""
  loss, metrics = _nclip_terms(outputs, cfg)
  metrics["loss/total"] = loss
  return loss, metrics


def xclip_objective(outputs: dict, cfg,
                    ring_mesh=None) -> tuple[jnp.ndarray, dict]:
  """xCLIP: InfoNCE (by ring over `ring_mesh` if given) + nclip.weight ·
  nCLIP, on the global batch."""
  l_clip, metrics = losses.clip_objective(outputs, cfg, ring_mesh)
  l_nclip, nclip_metrics = _nclip_terms(outputs, cfg)
  total = l_clip + cfg.nclip.weight * l_nclip
  metrics.update(nclip_metrics)
  metrics["loss/total"] = total
  return total, metrics


def jsd_nclip_objective(outputs: dict, cfg,
                        axis_name=None) -> tuple[jnp.ndarray, dict]:
  """CLIP-Lite (JSD + priors, device-local) + nclip.weight · nCLIP, whose
  batch mean is all-reduced over `axis_name` (one [K] vector)."""
  l_cliplite, metrics = losses.cliplite_objective(outputs, cfg)
  l_nclip, nclip_metrics = _nclip_terms(outputs, cfg, axis_name)
  total = l_cliplite + cfg.nclip.weight * l_nclip
  metrics.update(nclip_metrics)
  metrics["loss/total"] = total
  return total, metrics


def symile_objective(outputs: dict, cfg) -> tuple[jnp.ndarray, dict]:
  """Symile's loss over M modalities (`loss.symile_sampling`)."""
  loss = symile.symile_loss(outputs["embeddings"], outputs["log_scale"],
                            cfg.symile_sampling, outputs.get("loss_key"))
  return loss, {"loss/symile": loss, "loss/total": loss,
                "temperature": jnp.exp(-outputs["log_scale"])}


def symile_lite_objective(outputs: dict, cfg) -> tuple[jnp.ndarray, dict]:
  """CLIP-Lite's JSD bound on Symile's MIP score, one rolled negative."""
  del cfg
  loss = symile.jsd_mip(outputs["embeddings"], outputs["log_scale"])
  return loss, {"loss/jsd_mip": loss, "loss/total": loss,
                "temperature": jnp.exp(-outputs["log_scale"])}


def pairwise_infonce_objective(outputs: dict,
                               cfg) -> tuple[jnp.ndarray, dict]:
  """CLIP on every pair of modalities: the sum of their symmetric InfoNCE
  losses (Symile's baseline)."""
  del cfg
  reps = outputs["embeddings"]
  loss = sum(losses.infonce(reps[i], reps[j], outputs["log_scale"])
             for i in range(len(reps)) for j in range(i + 1, len(reps)))
  return loss, {"loss/pairwise_infonce": loss, "loss/total": loss,
                "temperature": jnp.exp(-outputs["log_scale"])}


_CLIPLITE = "Shrivastava et al., 2021 (CLIP-Lite)"
_NCLIP = "Zhou et al., CVPR 2023"
_SYMILE = "Saporta et al., NeurIPS 2024"
OBJECTIVES = {
    "jsd": Objective(losses.cliplite_objective, device_local=True, rolls=True,
                     takes_axis=True, priors=True, gathers="nothing",
                     paper=_CLIPLITE),
    "infonce": Objective(losses.clip_objective, device_local=False,
                         gathers="every embedding [B, D]", ring=True,
                         paper="Radford et al., 2021 (CLIP)"),
    "sigmoid": Objective(losses.siglip_objective, device_local=False,
                         logit_bias=True, gathers="every embedding [B, D]",
                         ring=True,
                         paper="Zhai et al., 2023 (SigLIP)"),
    "nclip": Objective(nclip_objective, device_local=False, prototypes=True,
                       gathers="the mean assignment [K]", paper=_NCLIP),
    "xclip": Objective(xclip_objective, device_local=False, prototypes=True,
                       gathers="every embedding [B, D]", ring=True,
                       paper=_NCLIP),
    "jsd_nclip": Objective(jsd_nclip_objective, device_local=True, rolls=True,
                           takes_axis=True, priors=True, prototypes=True,
                           gathers="the mean assignment [K]",
                           paper=f"{_CLIPLITE} + {_NCLIP}"),
    "symile": Objective(symile_objective, device_local=False, multimodal=True,
                        needs_key=True,
                        gathers="every modality's embeddings [B, D]",
                        paper=_SYMILE),
    "symile_lite": Objective(symile_lite_objective, device_local=True,
                             rolls=True, multimodal=True, gathers="nothing",
                             paper=f"{_CLIPLITE} + {_SYMILE}"),
    "pairwise_infonce": Objective(
        pairwise_infonce_objective, device_local=False, multimodal=True,
        modality_score="pairwise",
        gathers="every modality's embeddings [B, D]",
        paper="CLIP on every pair (Symile's baseline)"),
}


# The objectives that read `loss.nclip`.
NCLIP_LOSSES = tuple(n for n, o in OBJECTIVES.items() if o.prototypes)


def loss_key(prior_rng: jax.Array) -> jax.Array:
  """The key an objective with `needs_key` samples negatives with, derived
  from the step's prior key (the multi-modal models draw no prior noise)."""
  return jax.random.fold_in(prior_rng, 1)


GATHERS = ("all", "ring")


def by_ring(loss_config) -> bool:
  """Whether `loss_config` (config.loss) asks for the ring, not the gather
  (configs saved before `loss.gather` existed gather)."""
  return loss_config.get("gather", "all") == "ring"
