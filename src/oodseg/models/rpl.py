"""The RPL model (Liu et al., ICCV 2023; SPEC §2.3): a frozen segmentation network plus a residual
pattern module, attached to ANY network by forward hooks (the training recipe is :mod:`oodseg.training.rpl`).

Where it attaches:

* ``feature_module`` (default ``"aspp"``): the module whose INPUT are the high-level backbone features;
  the RPL ASPP runs on them.
* ``residual_module``: the module whose INPUT receives the residual. Default: the network's declared
  ``rpl_residual_module`` (:class:`~oodseg.models.source.SourceConventions`; DeepWV3Plus: ``"final"``, the
  published layout, which adds the residual to the decoder features ``dec0`` before the whole classifier
  block), else the final 1×1 classifier found by :class:`~oodseg.adapter.ModelAdapter` (its input ``z``).
  A module other than the classifier must end in it (its output is the classifier's output; checked).

The residual module: ASPP (width and rates copied from the feature module when it is an oodseg
:class:`~oodseg.models.ASPP`, whose weights it starts from — the paper's partial loading — or read from
DeepWV3Plus's :class:`~oodseg.models.deepwv3.ConcatASPP`; otherwise 256 and (6, 12, 18)) → bilinear
upsampling to the residual target's size with the network's own ``align_corners`` → zero-initialised 1×1
"residual head" to the target's width; a 1×1 projector (R = 304) feeds CoroCL during training only.
:class:`RPLModel` is registered as the architecture ``"rpl"`` so :func:`oodseg.models.load_checkpoint`
rebuilds it and ``oodseg score`` scores it unchanged (its forward returns the residual-augmented output).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodseg.adapter import ModelAdapter
from oodseg.errors import OodsegError
from oodseg.models.blocks import ASPP
from oodseg.models.deepwv3 import ConcatASPP
from oodseg.models.registry import build_model

DEFAULT_RATES = (6, 12, 18)


class ResidualPatternModule(nn.Module):
    """ASPP → upsample → (residual (B, out_channels, h, w), projection (B, projection_dim, h, w)).

    Args:
        in_channels: channels of the high-level features.
        out_channels: width D of the input the residual is added to.
        width: ASPP branch and output width (paper 256).
        rates: dilation rates of the three 3×3 branches.
        projection_dim: R of the CoroCL projector (paper 304).
        align_corners: of the bilinear upsampling (the base network's convention).
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 256,
                 rates: Sequence[int] = DEFAULT_RATES, projection_dim: int = 304, align_corners: bool = False):
        super().__init__()
        self.align_corners = bool(align_corners)
        self.aspp = ASPP(in_channels, width, tuple(int(r) for r in rates))
        self.residual_head = nn.Conv2d(width, out_channels, 1)
        nn.init.zeros_(self.residual_head.weight)
        nn.init.zeros_(self.residual_head.bias)
        self.projector = nn.Conv2d(width, projection_dim, 1)

    def forward(self, features: Tensor, size: tuple[int, int],
                with_projection: bool = False) -> tuple[Tensor, Tensor | None]:
        """High-level features (B, in_channels, h', w') → residual at ``size`` (and the projection)."""
        hidden = F.interpolate(self.aspp(features), size=size, mode="bilinear", align_corners=self.align_corners)
        projection = self.projector(hidden) if with_projection else None
        return self.residual_head(hidden), projection


def _aspp_layout(module: nn.Module) -> tuple[int, list[int]] | None:
    """(width, rates of the dilated branches) of an oodseg :class:`ASPP` or DeepWV3Plus's :class:`ConcatASPP`."""
    if isinstance(module, ASPP):
        return module.project[0].out_channels, [b[0].dilation[0] for b in module.branches[1:-1]]
    if isinstance(module, ConcatASPP):
        return module.features[0][0].out_channels, [b[0].dilation[0] for b in module.features[1:]]
    return None


def feature_candidates(base: nn.Module, head: str, probe_size: tuple[int, int] = (128, 128),
                       limit: int = 5) -> list[str]:
    """Names of up to ``limit`` modules (the last to run) whose input is a 4-D tensor at the coarsest
    resolution any module sees before ``head`` runs: where RPL's ``feature_module`` may attach.

    One eval-mode probe forward pass on a random (1, 3, *probe_size) image."""
    from oodseg.adapter import evaluation_mode

    seen: list[tuple[str, int]] = []
    done: list[bool] = []

    def record(name):
        def hook(module, inputs):
            if name == head:
                done.append(True)
            if not done and name and inputs and isinstance(inputs[0], Tensor) and inputs[0].dim() == 4:
                seen.append((name, int(inputs[0].shape[-2] * inputs[0].shape[-1])))
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in base.named_modules()]
    reference = next(iter(base.parameters()))
    probe = torch.rand((1, 3, *probe_size), generator=torch.Generator().manual_seed(0))
    try:
        with evaluation_mode(base), torch.no_grad():
            base(probe.to(device=reference.device, dtype=reference.dtype))
    finally:
        for handle in handles:
            handle.remove()
    coarsest = min((area for _, area in seen), default=None)
    names = list(dict.fromkeys(name for name, area in seen if area == coarsest
                                  and not (head == name or head.startswith(name + "."))))
    return names[-limit:]


class RPLModel(nn.Module):
    """A frozen segmentation network plus an RPL residual on the input of its classifier (block).

    ``forward(images (B,3,H,W) in [0,1])`` returns the base network's output computed with
    ``x + residual`` at the residual module's input ``x`` (by default the head's ``z``);
    ``forward(images, training_outputs=True)`` returns
    ``{"vanilla", "rpl"}`` logits (B,C,h,w) at the head's resolution and ``"projection"``
    (B,R,h,w), running the frozen network once without gradients. The hooks act only inside
    this forward: calling ``base`` directly still gives the vanilla logits.

    Args:
        base: the closed-set network; frozen (``requires_grad=False``, always eval mode).
        feature_module: name of the module whose INPUT are the high-level features (when it does not
            exist, the one-line error lists candidates: :func:`feature_candidates`).
        head: name of the final 1×1 classifier conv (found by :class:`ModelAdapter` when None).
        residual_module: name of the module whose input receives the residual (see the module docstring);
            None: the network's ``rpl_residual_module``, else the head.
        width, rates: RPL ASPP width and rates (from the feature module when it is an ASPP, see the module
            docstring).
        projection_dim: CoroCL projector dims R.
        init_from_base: start the RPL ASPP from the feature module's weights when it is a matching ASPP.
    """

    def __init__(self, base: nn.Module, feature_module: str = "aspp", head: str | None = None,
                 width: int | None = None, rates: Sequence[int] | None = None, projection_dim: int = 304,
                 init_from_base: bool = True, probe_size: tuple[int, int] = (128, 128),
                 residual_module: str | None = None):
        super().__init__()
        modules = dict(base.named_modules())
        with ModelAdapter(base, head=head, probe_size=probe_size) as adapter:
            if adapter.logits_only:
                raise OodsegError(f"model {type(base).__name__}: RPL adds its residual to the input of the 1×1 "
                                  f"classifier head, and no 1×1 conv reproduces this model's output; name it with "
                                  f"head=NAME")
            self.head_name, align_corners = adapter.head_name, adapter.align_corners
        if feature_module not in modules or not feature_module:
            candidates = ", ".join(feature_candidates(base, self.head_name, probe_size)) or "none found"
            raise OodsegError(f"feature_module {feature_module!r}: no module of that name in {type(base).__name__} "
                              f"(RPL needs the module fed by the high-level features; modules fed by the coarsest "
                              f"4-D features before the head: {candidates})")
        features = modules[feature_module]
        head_module = modules[self.head_name]
        self.residual_name = residual_module or getattr(base, "rpl_residual_module", None) or self.head_name
        if self.residual_name not in modules:
            raise OodsegError(f"residual_module {self.residual_name!r}: no module of that name in "
                              f"{type(base).__name__}")
        self.base = base
        self.feature_module = feature_module
        # the adapter reads the base network's conventions (declared or detected) through this wrapper
        self.align_corners = align_corners
        self.extra_heads = {name: f"base.{module}" for name, module in (getattr(base, "extra_heads", None) or {}).items()}
        self._mode = "capture"
        self._captured: dict[str, Tensor] = {}
        features.register_forward_pre_hook(self._capture_features)
        modules[self.residual_name].register_forward_pre_hook(self._add_residual)
        feature_channels, target_channels = self._probe_channels(probe_size)
        is_aspp = isinstance(features, ASPP)
        layout = _aspp_layout(features)
        if width is None:
            width = layout[0] if layout else 256
        if rates is None:
            rates = layout[1] if layout else DEFAULT_RATES
        self.num_classes = int(head_module.out_channels)
        self.build_params = {"feature_module": feature_module, "head": self.head_name, "width": int(width),
                             "rates": [int(r) for r in rates], "projection_dim": int(projection_dim),
                             "residual_module": self.residual_name}
        self.rpl = ResidualPatternModule(int(feature_channels), target_channels, int(width),
                                         rates, int(projection_dim), self.align_corners)
        if init_from_base and is_aspp:
            source, target = features.state_dict(), self.rpl.aspp.state_dict()
            if source.keys() == target.keys() and all(source[k].shape == target[k].shape for k in target):
                self.rpl.aspp.load_state_dict(source)
        base.requires_grad_(False)
        base.eval()
        self._mode = "off"  # the hooks act only inside this module's forward; ``base(x)`` stays vanilla

    def _target(self) -> str:
        """The residual target for messages: the head or the named residual module."""
        kind = "the head" if self.residual_name == self.head_name else "the residual module"
        return f"{kind} {self.residual_name!r}"

    def _probe_channels(self, probe_size: tuple[int, int]) -> tuple[int, int]:
        """One no-grad forward pass checking that the feature module runs before the residual target and that
        the target ends in the head; (feature channels, target input channels)."""
        reference = next(iter(self.base.parameters()))
        probe = torch.rand((1, 3, *probe_size), generator=torch.Generator().manual_seed(0))
        outputs: dict[str, Tensor] = {}
        handles = [self.base.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, key=key: outputs.__setitem__(key, output))
            for key, name in (("target", self.residual_name), ("head", self.head_name))]
        was_training = self.base.training
        try:
            self.base.eval()
            with torch.no_grad():
                self.base(probe.to(device=reference.device, dtype=reference.dtype))
            captured = dict(self._captured)
        finally:
            self.base.train(was_training)
            self._captured.clear()
            for handle in handles:
                handle.remove()
        if "features" not in captured or "z" not in captured:
            raise OodsegError(f"feature_module {self.feature_module!r}: did not run before {self._target()} "
                              f"in a forward pass; RPL cannot attach to this network")
        if not torch.equal(outputs["target"], outputs["head"]):
            raise OodsegError(f"residual_module {self.residual_name!r}: its output is not the output of the head "
                              f"{self.head_name!r}; name the head or a block ending in it")
        return int(captured["features"].shape[1]), int(captured["z"].shape[1])

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
            raise OodsegError(f"feature_module {self.feature_module!r}: did not run before {self._target()}; "
                              "RPL cannot attach to this network")
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
        target = self.base.get_submodule(self.residual_name)  # ends in the head (checked when attaching)
        residual, projection = self.rpl(features, tuple(z.shape[-2:]), with_projection=True)
        with torch.no_grad():
            vanilla = target(z)
        rpl = target(z + residual.to(z.dtype))
        return {"vanilla": vanilla, "rpl": rpl, "projection": projection}


def build_rpl_model(base_architecture: str, base_params: dict | None = None, **rpl_params: Any) -> RPLModel:
    """Factory of the ``"rpl"`` architecture: ``build_model(base_architecture, **base_params)`` wrapped in :class:`RPLModel`.

    ``rpl_params`` are :class:`RPLModel` options (``feature_module``, ``head``, ``width``, ``rates``,
    ``projection_dim``, ``residual_module``); weights come from the checkpoint.
    """
    base = build_model(base_architecture, **(base_params or {}))
    return RPLModel(base, init_from_base=False, **rpl_params)

