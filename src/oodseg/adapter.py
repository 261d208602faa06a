"""ModelAdapter: hooks the final 1×1 classifier conv of any segmentation ``nn.Module``.

The adapter returns a :class:`SegOutput` holding everything a score needs — logits at
the head's resolution, the head's input features ``z``, its weight and bias, and (when
the head is fed by ``conv3×3 → BN → ReLU``) the inputs of that block — so that no
scoring method has to know a network's internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from oodseg.conventions import model_logits, resize_logits, resize_map
from oodseg.errors import OodsegError


@dataclass
class HeadBlock:
    """The ``conv(k×k) → BN → ReLU`` block feeding the final 1×1 head (for second-to-last-layer PGN).

    Attributes:
        input: (B, K, H_in, W_in) input of the k×k conv.
        conv_weight: (F, K, kh, kw) weight of that conv.
        stride, padding, dilation: the conv's geometry, each a pair of ints.
        bn_scale: (F,) eval-mode BN scale ``γ / sqrt(running_var + eps)``.
        pre_relu: (B, F, h, w) BN output before the ReLU (the ReLU gate is ``pre_relu > 0``).
    """

    input: torch.Tensor
    conv_weight: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    bn_scale: torch.Tensor
    pre_relu: torch.Tensor


@dataclass
class SegOutput:
    """One forward pass seen through the adapter.

    Attributes:
        logits: (B, C, h, w) classifier output at the head's own resolution.
        features: (B, D, h, w) input ``z`` of the final 1×1 conv (pixel-aligned with ``logits``),
            or None when only logits are known.
        weight: (C, D) the 1×1 head's weight, or None.
        bias: (C,) the head's bias, or None (also None when the head has no bias).
        image_size: (H, W) of the input images, or None when unknown.
        block: the ``conv → BN → ReLU`` block feeding the head, when present and captured.
        align_corners: how the model upsamples its logits (bilinear); scores are upsampled the same way.
        extras: outputs of the model's further heads at the head's resolution, by name (the model's
            ``extra_heads``), e.g. ``"ood_logits"`` (B, 2, h, w) of DenseHybrid's networks.
    """

    logits: torch.Tensor
    features: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    image_size: tuple[int, int] | None = None
    block: HeadBlock | None = None
    align_corners: bool = False
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def upsample(self, score: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """A (B, h, w) score at the head's resolution, bilinearly upsampled to ``size`` or the image size."""
        size = size or self.image_size
        return score if size is None else resize_map(score, size, self.align_corners)

    def upsampled_logits(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, C, H, W) logits bilinearly upsampled (the model's ``align_corners``) to ``size`` or the image size."""
        size = size or self.image_size
        return self.logits if size is None else resize_logits(self.logits, size, self.align_corners)

    def at_image_size(self, features: bool = False) -> "SegOutput":
        """This output with logits, extra heads and (when ``features``) ``z`` bilinearly upsampled to the
        image size, the model's ``align_corners``: the tensors a source that scores its upsampled
        logits sees (SPEC §8). The ``conv → BN → ReLU`` block is dropped (it lives at the head's resolution)."""
        if self.image_size is None:
            raise OodsegError("SegOutput: image_size unknown; cannot score at the image resolution")

        def up(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else resize_logits(tensor, self.image_size, self.align_corners)

        return SegOutput(logits=up(self.logits), features=up(self.features) if features else None,
                         weight=self.weight, bias=self.bias, image_size=self.image_size, block=None,
                         align_corners=self.align_corners,
                         extras={name: up(value) for name, value in self.extras.items()})


def _is_classifier_conv(module: nn.Module) -> bool:
    """A 1×1, stride-1, unpadded, ungrouped ``Conv2d`` (pixel-aligned ``W z + b``)."""
    return (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and tuple(module.stride) == (1, 1)
            and tuple(module.padding) == (0, 0) and module.groups == 1)


def _mismatch(candidate: torch.Tensor, logits: torch.Tensor, align_corners: bool = False) -> float:
    """Relative L∞ distance between ``logits`` and ``candidate`` resized to their size (bilinear with the
    model's ``align_corners``; ∞ if shapes differ).

    NaN/Inf are compared as equal to themselves, so a head with non-finite outputs is still found.
    """
    if candidate.shape[:2] != logits.shape[:2]:
        return float("inf")
    candidate = torch.nan_to_num(resize_logits(candidate, logits.shape[-2:], align_corners), posinf=1e30,
                                 neginf=-1e30)
    logits = torch.nan_to_num(logits, posinf=1e30, neginf=-1e30)
    scale = logits.abs().max().clamp_min(1e-12)
    return float((candidate - logits).abs().max() / scale)


@dataclass
class _BlockModules:
    conv: nn.Conv2d
    bn: nn.BatchNorm2d


class ModelAdapter:
    """Wraps a segmentation network and exposes its final 1×1 classifier conv.

    ``ModelAdapter(model, head=None)(images (B,3,H,W) floats in [0,1]) -> SegOutput`` with
    logits (B,C,h,w) at the head's resolution, features ``z`` (B,D,h,w), weight (C,D), bias (C,).

    The head is found with one probe forward pass (random input of ``probe_size``): among the
    1×1 convs that run, the one whose output (bilinearly resized) equals the network's output
    logits; or give its module name as ``head``. With ``capture_block=True`` and a head fed by
    ``Conv2d(k×k) → BatchNorm2d → ReLU`` (Dropout allowed in between), ``SegOutput.block`` is
    filled too. Works under ``torch.no_grad`` and with gradients (tensors keep their graph).
    Hooks are removed by :meth:`close` or on leaving a ``with`` block.

    The model may declare ``align_corners`` (how it upsamples its logits; default False) and
    ``extra_heads`` (``{name: module name}``, see :class:`oodseg.models.source.SourceConventions`):
    the outputs of those modules are returned in ``SegOutput.extras``. When the head runs more than
    once per forward (RPL's shared ``final``), its last call is the one captured.
    """

    def __init__(self, model: nn.Module, head: str | None = None, capture_block: bool = False,
                 probe_size: tuple[int, int] = (128, 128)):
        if not isinstance(model, nn.Module):
            raise OodsegError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.capture_block = capture_block
        self._modules = dict(model.named_modules())
        if head is not None:
            module = self._modules.get(head)
            if module is None:
                raise OodsegError(f"head {head!r}: no module of that name in {type(model).__name__}")
            if not _is_classifier_conv(module):
                raise OodsegError(f"head {head!r}: is a {_describe(module)}, not a 1×1 stride-1 Conv2d")
        self.head_name, self._block = self._probe(head, probe_size)
        self.head: nn.Conv2d = self._modules[self.head_name]
        self.num_classes = int(self.head.out_channels)
        self.align_corners = bool(getattr(model, "align_corners", False))
        self.extra_heads = dict(getattr(model, "extra_heads", None) or {})
        for name, module_name in self.extra_heads.items():
            if not isinstance(self._modules.get(module_name), nn.Module):
                raise OodsegError(f"model {type(model).__name__}: extra head {name!r} names {module_name!r}, "
                                  f"which is not one of its modules")
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._attach()

    # -- discovery -------------------------------------------------------------------------
    def _probe(self, head: str | None, probe_size: tuple[int, int]) -> tuple[str, _BlockModules | None]:
        """One eval-mode forward pass recording, per leaf module in execution order, its input and output."""
        names = {id(m): n for n, m in self._modules.items()}
        calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                calls.append((names[id(module)], inputs[0].detach().clone(), output.detach().clone()))

        leaves = [m for m in self._modules.values() if not list(m.children())]
        handles = [m.register_forward_hook(record) for m in leaves]
        reference = next(iter(self.model.parameters()), None)
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand((1, 3, *probe_size), generator=generator).to(device=device, dtype=dtype)
        modes = {module: module.training for module in self.model.modules()}
        try:
            self.model.eval()
            with torch.no_grad():
                logits = model_logits(self.model(probe))
        except RuntimeError as exc:
            raise OodsegError(f"model {type(self.model).__name__}: probe forward pass on a {probe_size} image failed "
                              f"({str(exc).splitlines()[0]}); pass probe_size=(H, W) or head=NAME") from exc
        finally:
            for module, training in modes.items():  # per module: a recursive train() would lose mixed modes
                module.training = training
            for h in handles:
                h.remove()
        if logits.dim() != 4:
            raise OodsegError(f"model output: expected logits of shape (B, C, H, W), got {tuple(logits.shape)}")
        if head is None:
            head = self._find_head(calls, logits)
        elif not any(name == head for name, _, _ in calls):
            raise OodsegError(f"head {head!r}: did not run in a forward pass of {type(self.model).__name__}")
        return head, self._find_block(calls, head)

    def _find_head(self, calls, logits: torch.Tensor) -> str:
        candidates = [(name, out) for name, _, out in calls if _is_classifier_conv(self._modules[name])]
        if not candidates:
            raise OodsegError(f"model {type(self.model).__name__}: no 1×1 Conv2d classifier head found; pass head=NAME")
        align_corners = bool(getattr(self.model, "align_corners", False))
        errors = {name: _mismatch(out, logits, align_corners) for name, out in candidates}
        best = min(errors, key=errors.get)
        if errors[best] <= 1e-4:
            return best
        right_channels = [name for name, out in candidates if out.shape[1] == logits.shape[1]]
        if len(set(right_channels)) == 1:
            return right_channels[0]
        raise OodsegError(f"model {type(self.model).__name__}: cannot tell which 1×1 conv produces the logits "
                          f"(candidates: {', '.join(sorted(set(right_channels))) or 'none with matching channels'}); "
                          f"pass head=NAME")

    def _find_block(self, calls, head: str) -> _BlockModules | None:
        """The ``conv → BN → ReLU`` feeding the head (skipping ReLU/Dropout modules), verified on the probe's values."""
        index = max(i for i, (name, _, _) in enumerate(calls) if name == head)
        z = calls[index][1]
        i = index - 1
        while i >= 0 and isinstance(self._modules[calls[i][0]], (nn.ReLU, nn.Dropout, nn.Dropout2d)):
            i -= 1
        if i < 1:
            return None
        bn_name, bn_in, bn_out = calls[i]
        conv_name, _, conv_out = calls[i - 1]
        bn, conv = self._modules[bn_name], self._modules[conv_name]
        if not (isinstance(bn, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d) and conv.groups == 1
                and bn.track_running_stats and isinstance(conv.padding, tuple)):
            return None
        if not (torch.equal(conv_out, bn_in) and torch.equal(torch.relu(bn_out), z)):
            return None
        return _BlockModules(conv, bn)

    # -- hooks -----------------------------------------------------------------------------
    def _attach(self) -> None:
        def on_head(module, inputs, output):
            self._captured["z"] = inputs[0]
            self._captured["logits"] = output

        self._handles.append(self.head.register_forward_hook(on_head))
        for name, module_name in self.extra_heads.items():
            def on_extra(module, inputs, output, key=f"extra:{name}"):
                self._captured[key] = output

            self._handles.append(self._modules[module_name].register_forward_hook(on_extra))
        if self.capture_block and self._block is not None:
            def on_conv(module, inputs, output):
                self._captured["block_input"] = inputs[0]

            def on_bn(module, inputs, output):
                self._captured["pre_relu"] = output.clone()  # an in-place ReLU would overwrite it

            self._handles.append(self._block.conv.register_forward_hook(on_conv))
            self._handles.append(self._block.bn.register_forward_hook(on_bn))

    @property
    def has_block(self) -> bool:
        """Whether the head is fed by a ``conv → BN → ReLU`` block (captured when ``capture_block``)."""
        return self._block is not None

    def close(self) -> None:
        """Remove the hooks (the adapter cannot be called afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()

    def __enter__(self) -> "ModelAdapter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor) -> SegOutput:
        """Run the model on ``images`` (B, 3, H, W) floats in [0, 1] and return the head's view of it."""
        if not self._handles:
            raise OodsegError("adapter: closed (hooks removed); create a new ModelAdapter")
        _check_images(images)
        self._captured.clear()
        try:
            self.model(images)
            captured = dict(self._captured)
        finally:
            self._captured.clear()
        if "logits" not in captured:
            raise OodsegError(f"head {self.head_name!r}: did not run in this forward pass")
        block = None
        if self.capture_block and self._block is not None:
            conv, bn = self._block.conv, self._block.bn
            gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
            block = HeadBlock(input=captured["block_input"], conv_weight=conv.weight,
                              stride=tuple(conv.stride), padding=tuple(conv.padding), dilation=tuple(conv.dilation),
                              bn_scale=gamma / torch.sqrt(bn.running_var + bn.eps), pre_relu=captured["pre_relu"])
        missing = [name for name in self.extra_heads if f"extra:{name}" not in captured]
        if missing:
            raise OodsegError(f"extra head {missing[0]!r} ({self.extra_heads[missing[0]]}): did not run in this forward pass")
        extras = {name: captured[f"extra:{name}"] for name in self.extra_heads}
        return SegOutput(logits=captured["logits"], features=captured["z"], weight=self.head.weight.flatten(1),
                         bias=self.head.bias, image_size=(int(images.shape[-2]), int(images.shape[-1])), block=block,
                         align_corners=self.align_corners, extras=extras)


def _check_images(images: object) -> None:
    if not isinstance(images, torch.Tensor):
        raise OodsegError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise OodsegError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise OodsegError(f"images: expected floats in [0, 1], got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise OodsegError("images: contain NaN or Inf")


def _describe(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return (f"Conv2d(kernel={tuple(module.kernel_size)}, stride={tuple(module.stride)}, "
                f"padding={module.padding}, groups={module.groups})")
    return type(module).__name__


class ImageResolutionAdapter:
    """A :class:`ModelAdapter` whose outputs are :meth:`SegOutput.at_image_size`: scores computed on this
    adapter see the upsampled logits (and ``z`` when ``features``), as Meta-OoD, RPL, DenseHybrid and
    the SMIYC baselines score. Attributes other than the call are the wrapped adapter's."""

    def __init__(self, adapter: ModelAdapter, features: bool = False):
        self.adapter = adapter
        self.features = bool(features)

    def __call__(self, images: torch.Tensor) -> SegOutput:
        return self.adapter(images).at_image_size(features=self.features)

    def __getattr__(self, name: str):
        if name == "adapter":  # not set yet (e.g. while unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.adapter, name)

