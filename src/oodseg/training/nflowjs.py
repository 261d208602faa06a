"""The NFlowJS training recipe (SPEC §2.2): the segmentation model and a normalizing flow trained jointly.

The flow (:class:`oodseg.models.flow.Flow`) learns the density of inlier patches; its samples,
pasted into training images, are the synthetic negatives the segmentation model learns to flag.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from oodseg.conventions import OUTLIER, model_logits, resize_logits
from oodseg.errors import OodsegError
from oodseg.models.flow import Flow
from oodseg.training.config import TrainConfig
from oodseg.training.data import training_class_weights
from oodseg.training.recipe import Recipe, rank_mean, unwrap


# --- NFlowJS: joint training of the segmentation model and the flow (SPEC §2.2) ---------------

def patch_boxes(seeds: Sequence[int], height: int, width: int, multiple: int,
                max_fraction: float = 0.25) -> Tensor:
    """(B, 4) int64 boxes ``(top, left, h, w)``, one per sample seed: sides uniform over the multiples
    of ``multiple`` in ``[multiple, max_fraction·min(height, width)]``, position uniform inside the image.

    NFlowJS samples U(16, 216) px on 1024-px images; ``max_fraction=0.25`` scales that to the crop.
    """
    largest = max(multiple, int(max_fraction * min(height, width)) // multiple * multiple)
    if largest > min(height, width):
        raise OodsegError(f"crop {height}×{width} is smaller than the flow's patch multiple {multiple}")
    boxes = []
    for seed in seeds:
        rng = np.random.default_rng([int(seed), 0x6E66])
        h, w = (int(rng.integers(1, largest // multiple + 1)) * multiple for _ in range(2))
        boxes.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    return torch.tensor(boxes, dtype=torch.long)


class NFlowJSModule(nn.Module):
    """The segmentation model and the flow in one module (one DDP wrapper for both).

    ``forward(images (B,3,H,W), boxes (B,4), seeds (B,), joint)`` returns ``{"nll": (B,) nats of the
    inlier content inside each box}`` and, when ``joint``, ``"logits"`` (B,C,H,W) of the images with a
    flow sample ``x⁻ = f⁻¹(z)`` pasted into each box (differentiable w.r.t. the flow).
    """

    def __init__(self, model: nn.Module, flow: Flow):
        super().__init__()
        self.model = model
        self.flow = flow

    def forward(self, images: Tensor, boxes: Tensor, seeds: Tensor, joint: bool = True) -> dict[str, Tensor]:
        nll, pasted = [], images.clone()
        with torch.autocast(images.device.type, enabled=False):  # the flow always runs in float32
            if self.training and not self.flow.initialized:
                self.flow.initialize(images.float(), torch.Generator().manual_seed(int(seeds[0])))
            for i, ((top, left, h, w), seed) in enumerate(zip(boxes.tolist(), seeds.tolist())):
                generator = torch.Generator().manual_seed(int(seed))
                crop = images[i:i + 1, :, top:top + h, left:left + w].float()
                nll.append(self.flow.nll(crop, generator))  # first: initialises actnorm on inlier data
                if joint:
                    latents = [torch.randn((1, *shape), generator=generator).to(crop)
                               for shape in self.flow.latent_shapes(h, w)]
                    pasted[i, :, top:top + h, left:left + w] = self.flow.inverse(latents)[0].to(images.dtype)
        out = {"nll": torch.cat(nll)}
        if joint:
            out["logits"] = self.model(pasted)
        return out


class NFlowJSRecipe(Recipe):
    """NFlowJS (``oodseg train --recipe nflowjs --init CKPT``): score the result with ``jsd`` (T=2).

    Per step, every image gets one flow sample of random size pasted at a random place (label 254)
    and, with N the batch's labelled pixels (inlier + pasted), the loss is
    ``L = [Σ(1-m)·CE + λ·Σ m·JS(U, p) + Σ_i NLL(x_i^c)] / N``, where ``x_i^c`` is the inlier content the
    patch replaces (NLL in nats, dequantised). The JS term is counted once: its gradient reaches
    the segmentation model as in ``L_disc`` and the flow as in ``L_gen`` (the paper's ``L_disc + L_gen``
    optimises θ on ``L_disc`` and γ on ``L_gen``); a common 1/N keeps the paper's relative weights
    (under DDP every total is averaged over the ranks, :func:`oodseg.training.losses.nflowjs_loss`).
    The first ``flow_pretrain_steps`` steps train only the flow by maximum likelihood on the same
    random crops. The flow lives in the trained module (saved in ``trainer_state.pt``); the
    exported checkpoint is the segmentation model alone.

    Options: ``lam`` (3e-2), ``flow_lr`` (lr of the flow's group), ``flow_pretrain_steps``,
    ``patch_max_fraction`` (0.5: patch sides up to half the crop's shorter side; on SynthStreet
    this beat 0.25, the paper's area share, on all four track metrics), ``flow_levels``,
    ``flow_steps_per_level``, ``flow_hidden``,
    ``class_weight_power`` (0.5: the CE is class-weighted like the ``baseline`` recipe's, so
    fine-tuning keeps the closed-set objective the model was trained with; 0 for plain CE, e.g.
    for a model trained without weights).
    """

    name = "nflowjs"
    defaults = {"lr": 1e-4, "steps": 150}  # SynthStreet-tuned (benchmarks/ood_training.py)
    find_unused_parameters = True  # the segmentation model is idle during flow pre-training steps

    def __init__(self, lam: float = 3e-2, flow_lr: float = 1e-3, flow_pretrain_steps: int = 0,
                 patch_max_fraction: float = 0.5, flow_levels: int = 3, flow_steps_per_level: int = 4,
                 flow_hidden: int = 64, class_weight_power: float = 0.5, **unknown: Any) -> None:
        super().__init__(**unknown)
        if lam < 0 or flow_lr <= 0 or flow_pretrain_steps < 0 or not 0 < patch_max_fraction <= 1:
            raise OodsegError("recipe nflowjs: need lam >= 0, flow_lr > 0, flow_pretrain_steps >= 0, "
                              "0 < patch_max_fraction <= 1")
        self.lam, self.flow_lr = float(lam), float(flow_lr)
        self.flow_pretrain_steps, self.patch_max_fraction = int(flow_pretrain_steps), float(patch_max_fraction)
        self.flow_options = {"levels": int(flow_levels), "steps_per_level": int(flow_steps_per_level),
                             "hidden": int(flow_hidden)}
        self.class_weight_power = float(class_weight_power)
        self.class_weights: Tensor | None = None
        self.steps_done = 0

    def setup(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        super().setup(model, config)
        self.class_weights = training_class_weights(config, self.class_weight_power)
        flow = Flow(in_channels=3, **self.flow_options)
        if config.crop_size < flow.multiple:
            raise OodsegError(f"crop_size: {config.crop_size} is smaller than the flow's patch multiple {flow.multiple}")
        return NFlowJSModule(model, flow)

    def param_groups(self, module: nn.Module, config: TrainConfig) -> list[dict]:
        module = unwrap(module)
        return [{"params": [p for p in module.model.parameters() if p.requires_grad], "lr": config.lr},
                {"params": list(module.flow.parameters()), "lr": self.flow_lr}]

    def batch(self, data: dict, rng: np.random.Generator) -> dict:
        """Patch boxes from the per-sample seeds; label 254 inside them (flow-only steps keep the labels)."""
        self.steps_done += 1
        joint = self.steps_done > self.flow_pretrain_steps
        labels = data["label"]
        boxes = patch_boxes(data["seed"].tolist(), labels.shape[-2], labels.shape[-1],
                            2 ** self.flow_options["levels"], self.patch_max_fraction)
        if joint:
            labels = labels.clone()
            for i, (top, left, h, w) in enumerate(boxes.tolist()):
                labels[i, top:top + h, left:left + w] = OUTLIER
        return {**data, "label": labels, "boxes": boxes, "joint": joint}

    def loss(self, module: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        from oodseg.training.losses import nflowjs_loss

        images, labels = batch["image"], batch["label"]
        out = module(images, batch["boxes"], batch["seed"], joint=batch["joint"])
        dims = (batch["boxes"][:, 2] * batch["boxes"][:, 3] * images.shape[1]).to(out["nll"])
        terms = {"nll_bpd": float((out["nll"].detach() / (dims * math.log(2.0))).mean())}
        if not batch["joint"]:
            loss = (out["nll"] / dims).mean()
            return loss, {**terms, "flow_pretrain": 1.0}
        logits = resize_logits(model_logits(out).float(), labels.shape[-2:])
        loss, parts = nflowjs_loss(logits, labels, out["nll"], self.lam, self.class_weights, normalizer=rank_mean)
        return loss, {**terms, **{name: float(value) for name, value in parts.items()}}

    def export(self, module: nn.Module) -> tuple[nn.Module, str, dict]:
        """The segmentation model alone (the flow is not needed for scoring)."""
        return unwrap(module).model, self.architecture, self.arch_params

    def state_dict(self) -> dict:
        return {"steps_done": torch.tensor(self.steps_done)}

    def load_state_dict(self, state: dict) -> None:
        self.steps_done = int(state.get("steps_done", 0))
