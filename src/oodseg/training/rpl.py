"""Residual Pattern Learning with context-robust contrastive learning (RPL + CoroCL, SPEC §2.3).

A frozen closed-set network gets an external RPL module: an ASPP on the high-level backbone
features (the input of the module named ``feature_module``, default ``"aspp"``), upsampled to
the classifier's resolution, whose 1×1 "residual head" (zero-initialised) adds a residual to
the input ``z`` of the final 1×1 classifier, and whose 1×1 projector (R = 304 dims) feeds
CoroCL during training only. Everything attaches by hooks, so any network whose head
:class:`~oodseg.adapter.ModelAdapter` finds works; :class:`RPLModel` is registered as the
architecture ``"rpl"`` so :func:`oodseg.models.load_checkpoint` rebuilds it and ``oodseg score``
scores it unchanged (its forward returns the residual-augmented logits).

Choices where SPEC and the paper are silent: losses are computed on logits bilinearly
upsampled to the label size (as the paper); CoroCL runs on projections at the classifier's
resolution with labels downsampled by nearest neighbour; the CoroCL weight defaults to 0.1;
"inlier" pixels of the outlier-image context are the non-object pixels of whole outlier
images. When the feature module is an :class:`~oodseg.models.ASPP`, the RPL ASPP copies its
rates and width and starts from its weights (the paper's partial loading).

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
import torch.nn.functional as F
from torch import Tensor, nn

from oodseg.adapter import ModelAdapter
from oodseg.conventions import OUTLIER, resize_logits
from oodseg.errors import OodsegError
from oodseg.models import ASPP, build_model, register_architecture
from oodseg.training.losses import (inlier_mask, rpl_inlier_energy_loss, rpl_inlier_loss, rpl_outlier_loss,
                                    supervised_infonce)
from oodseg.training.outliers import OutlierPool, add_outliers, outlier_scene
from oodseg.training.config import TrainConfig
from oodseg.training.recipe import Recipe, labels_at, unwrap

DEFAULT_RATES = (6, 12, 18)


class ResidualPatternModule(nn.Module):
    """ASPP → upsample → (residual (B, out_channels, h, w), projection (B, projection_dim, h, w)).

    Args:
        in_channels: channels of the high-level features.
        out_channels: width D of the classifier input the residual is added to.
        width: ASPP branch and output width (paper 256).
        rates: dilation rates of the three 3×3 branches.
        projection_dim: R of the CoroCL projector (paper 304).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 256,
                 rates: Sequence[int] = DEFAULT_RATES, projection_dim: int = 304):
        super().__init__()
        self.aspp = ASPP(in_channels, width, tuple(int(r) for r in rates))
        self.residual_head = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.residual_head.weight)
        nn.init.zeros_(self.residual_head.bias)
        self.projector = nn.Conv2d(width, projection_dim, 1)

    def forward(self, features: Tensor, size: tuple[int, int],
                with_projection: bool = False) -> tuple[Tensor, Tensor | None]:
        """High-level features (B, in_channels, h', w') → residual at ``size`` (and the projection)."""
        hidden = F.interpolate(self.aspp(features), size=size, mode="bilinear", align_corners=False)
        projection = self.projector(hidden) if with_projection else None
        return self.residual_head(hidden), projection


class RPLModel(nn.Module):
    """A frozen segmentation network plus an RPL residual on its classifier input.

    ``forward(images (B,3,H,W) in [0,1])`` returns the base network's output computed with
    ``z + residual`` at the head; ``forward(images, training_outputs=True)`` returns
    ``{"vanilla", "rpl"}`` logits (B,C,h,w) at the head's resolution and ``"projection"``
    (B,R,h,w), running the frozen network once without gradients. The hooks act only inside
    this forward: calling ``base`` directly still gives the vanilla logits.

    Args:
        base: the closed-set network; frozen (``requires_grad=False``, always eval mode).
        feature_module: name of the module whose INPUT are the high-level features.
        head: name of the final 1×1 classifier conv (found by :class:`ModelAdapter` when None).
        width, rates: RPL ASPP width and rates (copied from the feature module when it is an ASPP).
        projection_dim: CoroCL projector dims R.
        init_from_base: start the RPL ASPP from the feature module's weights when it is a matching ASPP.
    """

    def __init__(self, base: nn.Module, feature_module: str = "aspp", head: str | None = None,
                 width: int | None = None, rates: Sequence[int] | None = None, projection_dim: int = 304,
                 init_from_base: bool = True, probe_size: tuple[int, int] = (128, 128)):
        super().__init__()
        modules = dict(base.named_modules())
        if feature_module not in modules or not feature_module:
            raise OodsegError(f"feature_module {feature_module!r}: no module of that name in "
                              f"{type(base).__name__} (RPL needs the module fed by the high-level features)")
        features = modules[feature_module]
        with ModelAdapter(base, head=head, probe_size=probe_size) as adapter:
            self.head_name = adapter.head_name
        head_module = modules[self.head_name]
        self.base = base
        self.feature_module = feature_module
        self._mode = "capture"
        self._captured: dict[str, Tensor] = {}
        features.register_forward_pre_hook(self._capture_features)
        head_module.register_forward_pre_hook(self._add_residual)
        feature_channels = self._probe_feature_channels(probe_size)
        is_aspp = isinstance(features, ASPP)
        if width is None:
            width = features.project[0].out_channels if is_aspp else 256
        if rates is None:
            rates = [b[0].dilation[0] for b in features.branches[1:-1]] if is_aspp else DEFAULT_RATES
        self.num_classes = int(head_module.out_channels)
        self.build_params = {"feature_module": feature_module, "head": self.head_name, "width": int(width),
                             "rates": [int(r) for r in rates], "projection_dim": int(projection_dim)}
        self.rpl = ResidualPatternModule(int(feature_channels), int(head_module.in_channels), int(width),
                                         rates, int(projection_dim))
        if init_from_base and is_aspp:
            source, target = features.state_dict(), self.rpl.aspp.state_dict()
            if source.keys() == target.keys() and all(source[k].shape == target[k].shape for k in target):
                self.rpl.aspp.load_state_dict(source)
        base.requires_grad_(False)
        base.eval()
        self._mode = "off"  # the hooks act only inside this module's forward; ``base(x)`` stays vanilla

    def _probe_feature_channels(self, probe_size: tuple[int, int]) -> int:
        """One no-grad forward pass checking that the feature module runs before the head; its channel count."""
        reference = next(iter(self.base.parameters()))
        probe = torch.rand((1, 3, *probe_size), generator=torch.Generator().manual_seed(0))
        was_training = self.base.training
        try:
            self.base.eval()
            with torch.no_grad():
                self.base(probe.to(device=reference.device, dtype=reference.dtype))
            captured = dict(self._captured)
        finally:
            self.base.train(was_training)
            self._captured.clear()
        if "features" not in captured or "z" not in captured:
            raise OodsegError(f"feature_module {self.feature_module!r}: did not run before the head "
                              f"{self.head_name!r} in a forward pass; RPL cannot attach to this network")
        return int(captured["features"].shape[1])

    def train(self, mode: bool = True) -> "RPLModel":
        """Set the RPL module's mode; the frozen network always stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def _capture_features(self, module: nn.Module, inputs: tuple) -> None:
        if self._mode != "off":
            self._captured["features"] = inputs[0]

    def _add_residual(self, module: nn.Module, inputs: tuple):
        z = inputs[0]
        if self._mode == "capture":
            if "features" in self._captured:
                self._captured["z"] = z
            return None
        if self._mode != "residual":
            return None
        if "features" not in self._captured:
            raise OodsegError(f"feature_module {self.feature_module!r}: did not run before the head "
                              f"{self.head_name!r}; RPL cannot attach to this network")
        residual, _ = self.rpl(self._captured.pop("features"), tuple(z.shape[-2:]))
        return (z + residual.to(z.dtype),) + tuple(inputs[1:])

    def forward(self, images: Tensor, training_outputs: bool = False):
        if not training_outputs:
            self._mode = "residual"
            try:
                return self.base(images)
            finally:
                self._mode = "off"
                self._captured.clear()
        self._mode = "capture"
        try:
            with torch.no_grad():
                self.base(images)
            features, z = self._captured["features"], self._captured["z"]
        finally:
            self._captured.clear()
            self._mode = "off"
        head = self.base.get_submodule(self.head_name)
        residual, projection = self.rpl(features, tuple(z.shape[-2:]), with_projection=True)
        with torch.no_grad():
            vanilla = head(z)
        rpl = head(z + residual.to(z.dtype))
        return {"vanilla": vanilla, "rpl": rpl, "projection": projection}


def build_rpl_model(base_architecture: str, base_params: dict | None = None, **rpl_params: Any) -> RPLModel:
    """Factory of the ``"rpl"`` architecture: ``build_model(base_architecture, **base_params)`` wrapped in :class:`RPLModel`.

    ``rpl_params`` are :class:`RPLModel` options (``feature_module``, ``head``, ``width``, ``rates``,
    ``projection_dim``); weights come from the checkpoint.
    """
    base = build_model(base_architecture, **(base_params or {}))
    return RPLModel(base, init_from_base=False, **rpl_params)


register_architecture("rpl", build_rpl_model)


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
    ``width``, ``rates``, ``projection_dim``. Score the result with ``energy``.
    """

    name = "rpl"
    defaults = {"lr": 5e-4, "steps": 300, "schedule": "poly"}

    def __init__(self, energy_weight: float = 0.05, inlier_energy_weight: float = 1.0,
                 contrast_weight: float = 0.1, temperature: float = 0.1,
                 samples_per_group: int = 512, head_lr_factor: float = 10.0,
                 paste_size: Sequence[float] = (0.1, 0.4), feature_module: str = "aspp", head: str | None = None,
                 width: int | None = None, rates: Sequence[int] | None = None, projection_dim: int = 304,
                 **unknown: Any) -> None:
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
                              "projection_dim": projection_dim}
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
