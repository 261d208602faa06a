"""The RPL + CoroCL training recipe (SPEC §2.3): losses and data; the model is :mod:`oodseg.models.rpl`.

A frozen closed-set network gets an external RPL module (:class:`~oodseg.models.rpl.RPLModel`,
attached by hooks to any network: an ASPP on the high-level features, a zero-initialised residual on
the classifier (block) input, a 1×1 projector of R = 304 dims feeding CoroCL during training only).

Choices where SPEC and the paper are silent: losses are computed on logits bilinearly
upsampled to the label size (as the paper); CoroCL runs on projections at the classifier's
resolution with labels downsampled by nearest neighbour; the CoroCL weight defaults to 0.1;
"inlier" pixels of the outlier-image context are the non-object pixels of whole outlier
images.

One addition to SPEC §2.3: SPEC's inlier losses (CE to the pseudo-label, entropy gap) do not see a
shift of all class logits by the same constant, so the outlier energy loss can be met by lowering
the logsumexp of EVERY pixel. On SynthStreet that is what happens (inlier median logsumexp 6.2 → 1.6
in 150 steps) and the anomaly-track energy AP falls below the frozen model's. The recipe therefore
adds ``inlier_energy_weight · mean_inliers (lse(rpl) - lse(vanilla))²`` (default weight 1;
``-p inlier_energy_weight=0`` gives SPEC's losses exactly).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from oodseg.conventions import OUTLIER, resize_logits
from oodseg.errors import OodsegError
from oodseg.models.rpl import RPLModel
from oodseg.training.losses import (inlier_mask, rpl_inlier_energy_loss, rpl_inlier_loss, rpl_outlier_loss,
                                    supervised_infonce)
from oodseg.training.outliers import OutlierPool, add_outliers, outlier_scene
from oodseg.training.config import TrainConfig
from oodseg.training.recipe import Recipe, labels_at, unwrap

def sample_pixels(embeddings: Tensor, labels: Tensor, group_values: Sequence[int], group_ids: Sequence[int],
                  max_per_group: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Pick up to ``max_per_group`` random pixel embeddings for each group.

    Args:
        embeddings: (B, R, h, w); labels: (B, h, w) group values per pixel.
        group_values: a pixel belongs to group k when ``labels == group_values[k]`` (use -1 for
            "any inlier trainId", i.e. ``labels < OUTLIER``).
        group_ids: the label given to group k's samples.
    Returns:
        (N, R) embeddings and (N,) int64 group ids.
    """
    flat = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    values = labels.reshape(-1)
    chosen, ids = [], []
    for value, group_id in zip(group_values, group_ids):
        members = torch.nonzero(values < OUTLIER if value == -1 else values == value).ravel()
        if members.numel() > max_per_group:
            order = torch.randperm(members.numel(), generator=generator)[:max_per_group]
            members = members[order.to(members.device)]
        chosen.append(flat[members])
        ids.append(torch.full((members.numel(),), group_id, dtype=torch.long, device=flat.device))
    return torch.cat(chosen), torch.cat(ids)


def coro_contrastive_loss(scene_projection: Tensor, scene_labels: Tensor, context_projection: Tensor,
                          context_labels: Tensor, temperature: float = 0.1, max_per_group: int = 512,
                          generator: torch.Generator | None = None) -> Tensor:
    """CoroCL: supervised InfoNCE with anchors = {outlier, inlier} pixels of the inlier scenes and
    contrast set = those plus {outlier, inlier} pixels of the outlier-image context.

    Args:
        scene_projection: (B, R, h, w) projections of inlier scenes with pasted outliers;
            scene_labels: (B, h, w) trainIds / 254 outlier / 255 ignored.
        context_projection: (B', R, h, w) projections of whole outlier images;
            context_labels: (B', h, w) 254 on the object, anything else = context inlier.
    """
    generator = generator or torch.Generator().manual_seed(0)
    anchors, anchor_ids = sample_pixels(scene_projection, scene_labels, (OUTLIER, -1), (1, 0),
                                        max_per_group, generator)
    context_inlier = torch.where(context_labels == OUTLIER, context_labels, torch.zeros_like(context_labels))
    others, other_ids = sample_pixels(context_projection, context_inlier, (OUTLIER, 0), (1, 0),
                                      max_per_group, generator)
    return supervised_infonce(anchors, anchor_ids, others, other_ids, temperature)


def _upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    return resize_logits(logits.float(), size)


class RPLRecipe(Recipe):
    """RPL + CoroCL on a frozen closed-set model (``oodseg train --recipe rpl --init CKPT --outliers POOL``).

    Options: ``energy_weight`` (0.05), ``inlier_energy_weight`` (1.0: weight of
    :func:`~oodseg.training.losses.rpl_inlier_energy_loss`, which keeps the inliers' logsumexp at the
    frozen model's; 0 gives SPEC §2.3's losses alone, whose residual then learns to lower the energy
    of every pixel), ``contrast_weight`` (0.1), ``temperature`` (0.1),
    ``samples_per_group`` (512), ``head_lr_factor`` (10: residual head and projector),
    ``paste_size`` (object size range as a fraction of the crop), ``feature_module``, ``head``,
    ``residual_module``, ``width``, ``rates``, ``projection_dim`` (:class:`~oodseg.models.rpl.RPLModel`).
    Score the result with ``energy`` (``oodseg score --preset rpl``: RPL's blur too).
    """

    name = "rpl"
    defaults = {"lr": 5e-4, "steps": 300, "schedule": "poly"}

    def __init__(self, energy_weight: float = 0.05, inlier_energy_weight: float = 1.0,
                 contrast_weight: float = 0.1, temperature: float = 0.1,
                 samples_per_group: int = 512, head_lr_factor: float = 10.0,
                 paste_size: Sequence[float] = (0.1, 0.4), feature_module: str = "aspp", head: str | None = None,
                 width: int | None = None, rates: Sequence[int] | None = None, projection_dim: int = 304,
                 residual_module: str | None = None, **unknown: Any) -> None:
        super().__init__(**unknown)
        if samples_per_group < 1 or temperature <= 0 or head_lr_factor <= 0:
            raise OodsegError("recipe rpl: samples_per_group, temperature and head_lr_factor must be positive")
        if inlier_energy_weight < 0:
            raise OodsegError(f"recipe rpl: inlier_energy_weight must be >= 0, got {inlier_energy_weight}")
        self.inlier_energy_weight = float(inlier_energy_weight)
        self.energy_weight, self.contrast_weight, self.temperature = energy_weight, contrast_weight, temperature
        self.samples_per_group, self.head_lr_factor = int(samples_per_group), float(head_lr_factor)
        self.paste_size = (float(paste_size[0]), float(paste_size[1]))
        self.model_options = {"feature_module": feature_module, "head": head, "width": width, "rates": rates,
                              "projection_dim": projection_dim, "residual_module": residual_module}
        self.pool: OutlierPool | None = None

    def setup(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        if not config.outliers:
            raise OodsegError("outliers: the rpl recipe needs an outlier pool (images/ + masks/)")
        self.pool = OutlierPool(config.outliers, mask_suffix=config.outlier_mask_suffix)
        self.base_architecture, self.base_params = config.arch, dict(config.arch_params)
        return RPLModel(model, **self.model_options)

    def param_groups(self, module: nn.Module, config: TrainConfig) -> list[dict]:
        rpl = unwrap(module).rpl
        heads = list(rpl.residual_head.parameters()) + list(rpl.projector.parameters())
        return [{"params": list(rpl.aspp.parameters()), "lr": config.lr},
                {"params": heads, "lr": config.lr * self.head_lr_factor}]

    def batch(self, data: dict, rng: np.random.Generator) -> dict:
        """Inlier scenes with one pasted object each, plus one whole outlier image per sample (the context)."""
        scenes = add_outliers(data, self.pool, mode="paste", rate=1.0, size_range=self.paste_size)
        size = tuple(data["label"].shape[-2:])
        contexts = []
        for seed in data["seed"].tolist():
            sample_rng = np.random.default_rng([int(seed), OUTLIER, 1])
            obj_image, obj_mask = self.pool[int(sample_rng.integers(len(self.pool)))]
            contexts.append(outlier_scene(obj_image, obj_mask, size, sample_rng))
        device = data["image"].device
        return {**scenes,
                "context_image": torch.stack([c[0] for c in contexts]).to(device),
                "context_label": torch.stack([c[1] for c in contexts]).to(device),
                "contrast_seed": int(rng.integers(2**62))}

    def loss(self, module: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        scenes, labels = batch["image"], batch["label"]
        n = scenes.shape[0]
        out = module(torch.cat([scenes, batch["context_image"]]), training_outputs=True)
        size = tuple(labels.shape[-2:])
        vanilla, rpl = _upsample(out["vanilla"][:n], size), _upsample(out["rpl"][:n], size)
        inliers = inlier_mask(labels, rpl.shape[1])
        ce, entropy_mse = rpl_inlier_loss(rpl, vanilla, inliers)
        energy_mse = rpl_inlier_energy_loss(rpl, vanilla, inliers)
        energy = rpl_outlier_loss(rpl, labels == OUTLIER, self.energy_weight)
        projection = out["projection"].float()
        grid = tuple(projection.shape[-2:])
        contrast = coro_contrastive_loss(
            projection[:n], labels_at(labels, grid, mode="nearest"), projection[n:],
            labels_at(batch["context_label"], grid, mode="nearest"), self.temperature, self.samples_per_group,
            torch.Generator().manual_seed(batch["contrast_seed"]))
        total = ce + entropy_mse + self.inlier_energy_weight * energy_mse + energy + self.contrast_weight * contrast
        return total, {"ce": float(ce.detach()), "entropy_mse": float(entropy_mse.detach()),
                       "energy_mse": float(energy_mse.detach()),
                       "energy": float(energy.detach()), "corocl": float(contrast.detach())}

    def export(self, module: nn.Module) -> tuple[nn.Module, str, dict]:
        model = unwrap(module)
        return model, "rpl", {"base_architecture": self.base_architecture, "base_params": self.base_params,
                              **model.build_params}
