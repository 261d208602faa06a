"""ModelAdapter: hooks the final 1×1 classifier conv of any segmentation ``nn.Module``.

The adapter returns a :class:`SegOutput` holding everything a score needs — logits at
the head's resolution, the head's input features ``z``, its weight and bias, and (when
the head is fed by ``conv3×3 → BN → ReLU``) the inputs of that block — so that no
scoring method has to know a network's internals. A model without a 1×1 classifier that
reproduces its output (a k×k head, summed heads, mask classification) is seen in
*logits-only* mode: its output is the logits, with no features or weight.

The model always runs in eval mode through the adapter (:func:`evaluation_mode`), so scoring
never updates BatchNorm statistics; the modes the user set are restored after every call.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

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


#: A 1×1 conv is the model's classifier when its output, bilinearly resized to the model's output size,
#: differs from that output by at most this fraction of the output's largest magnitude (relative L∞).
HEAD_TOLERANCE = 1e-3


@contextlib.contextmanager
def evaluation_mode(model: nn.Module, keep_training: Iterable[nn.Module] = ()) -> Iterator[nn.Module]:
    """Within: every module of ``model`` in eval mode except ``keep_training`` (in training mode);
    afterwards each module's own mode is restored (a recursive ``train()`` would lose mixed modes)."""
    keep = {id(module) for module in keep_training}
    # only the modules whose flag differs are touched (nn.Module.__setattr__ is slow; ``eval()`` recurses)
    flips = [(module, module.training) for module in model.modules() if module.training != (id(module) in keep)]
    try:
        for module, training in flips:
            module.training = not training
        yield model
    finally:
        for module, training in flips:
            module.training = training


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

    The head is found with one probe forward pass (random input of ``probe_size``): the 1×1 conv
    (stride 1, no padding, one group) whose output *reproduces* the network's output logits, i.e.
    bilinearly resized to the output size it lies within :data:`HEAD_TOLERANCE` (relative L∞) of
    them. A model that declares ``align_corners`` is checked with that setting; otherwise both are
    tried and the one that reproduces the output becomes :attr:`align_corners` (how the model
    upsamples; DPT and smp use True). Among several 1×1 convs with the class count (auxiliary heads)
    the one that reproduces the output wins. A ``head`` given by name must reproduce the output
    too, else OodsegError (LRASPP's ``high_classifier``: the model sums two classifiers).

    When no 1×1 conv reproduces the output (or with ``logits_only=True``) the adapter is in
    *logits-only* mode (:attr:`logits_only`): ``SegOutput.logits`` is the model's output itself,
    ``features``/``weight``/``bias`` are None, :attr:`head` and :attr:`head_name` are None, and
    scores that need the head's input features refuse with one line.

    With ``capture_block=True`` and a head fed by ``Conv2d(k×k) → BatchNorm2d → ReLU`` (Dropout
    allowed in between), ``SegOutput.block`` is filled too. Every call runs the model in eval mode
    (:func:`evaluation_mode`; :meth:`stochastic` keeps chosen modules training, for MC dropout) and
    restores the user's modes; parameters and buffers are never changed. Works under
    ``torch.no_grad`` and with gradients (tensors keep their graph). Hooks are removed by
    :meth:`close` or on leaving a ``with`` block.

    The model may declare ``align_corners`` (how it upsamples its logits) and ``extra_heads``
    (``{name: module name}``, see :class:`oodseg.models.source.SourceConventions`): the outputs of
    those modules are returned in ``SegOutput.extras``. When the head runs more than once per
    forward (RPL's shared ``final``), its last call is the one captured.
    """

    def __init__(self, model: nn.Module, head: str | None = None, capture_block: bool = False,
                 probe_size: tuple[int, int] = (128, 128), logits_only: bool = False):
        if not isinstance(model, nn.Module):
            raise OodsegError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if logits_only and head is not None:
            raise OodsegError(f"head {head!r}: cannot be combined with logits_only=True")
        self.model = model
        self.capture_block = capture_block
        self._modules = dict(model.named_modules())
        if head is not None:
            module = self._modules.get(head)
            if module is None:
                raise OodsegError(f"head {head!r}: no module of that name in {type(model).__name__}")
            if not _is_classifier_conv(module):
                raise OodsegError(f"head {head!r}: is a {_describe(module)}, not a 1×1 stride-1 Conv2d")
        declared = getattr(model, "align_corners", None)
        self.head_name, self.align_corners, self.num_classes, self._block = self._probe(
            head, probe_size, None if declared is None else bool(declared), logits_only)
        #: True when the model's output is the logits and no 1×1 classifier conv is read (no features, no weight)
        self.logits_only = self.head_name is None
        self.head: nn.Conv2d | None = None if self.logits_only else self._modules[self.head_name]
        self.extra_heads = dict(getattr(model, "extra_heads", None) or {})
        for name, module_name in self.extra_heads.items():
            if not isinstance(self._modules.get(module_name), nn.Module):
                raise OodsegError(f"model {type(model).__name__}: extra head {name!r} names {module_name!r}, "
                                  f"which is not one of its modules")
        self._captured: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._keep_training: tuple[nn.Module, ...] = ()
        self._open = True
        self._attach()

    # -- discovery -------------------------------------------------------------------------
    def _probe(self, head: str | None, probe_size: tuple[int, int], declared: bool | None,
               logits_only: bool) -> tuple[str | None, bool, int, _BlockModules | None]:
        """One eval-mode forward pass recording, per leaf module in execution order, its input and output:
        (head name or None for logits-only, align_corners, class count, block feeding the head)."""
        names = {id(m): n for n, m in self._modules.items()}
        calls: list[tuple[str, torch.Tensor, torch.Tensor]] = []

        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor):
                calls.append((names[id(module)], inputs[0].detach().clone(), output.detach().clone()))

        leaves = [m for m in self._modules.values() if not list(m.children())]
        handles = [] if logits_only else [m.register_forward_hook(record) for m in leaves]
        reference = next(iter(self.model.parameters()), None)
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand((1, 3, *probe_size), generator=generator).to(device=device, dtype=dtype)
        try:
            with evaluation_mode(self.model), torch.no_grad():
                logits = model_logits(self.model(probe))
        except RuntimeError as exc:
            raise OodsegError(f"model {type(self.model).__name__}: probe forward pass on a {probe_size} image failed "
                              f"({str(exc).splitlines()[0]}); pass probe_size=(H, W) or head=NAME") from exc
        finally:
            for h in handles:
                h.remove()
        if logits.dim() != 4:
            raise OodsegError(f"model output: expected logits of shape (B, C, H, W), got {tuple(logits.shape)}")
        num_classes = int(logits.shape[1])
        if logits_only:
            return None, bool(declared), num_classes, None
        if head is not None and not any(name == head for name, _, _ in calls):
            raise OodsegError(f"head {head!r}: did not run in a forward pass of {type(self.model).__name__}")
        outputs = {name: out for name, _, out in calls  # the last call of each conv (a shared head runs twice)
                   if (name == head if head is not None else _is_classifier_conv(self._modules[name]))}
        settings = (False, True) if declared is None else (declared,)
        errors = {(name, corners): _mismatch(out, logits, corners) for name, out in outputs.items()
                  for corners in settings}
        best = min(errors, key=errors.get) if errors else None
        if best is None or errors[best] > HEAD_TOLERANCE:
            if head is not None:
                corners = "either align_corners" if declared is None else f"align_corners={declared}"
                raise OodsegError(f"head {head!r}: its output does not reproduce the logits of "
                                  f"{type(self.model).__name__} (relative difference {errors[best]:.3g} after bilinear "
                                  f"resizing with {corners}, tolerance {HEAD_TOLERANCE:g}); name the 1×1 conv that "
                                  f"produces them, or give no head to score in logits-only mode")
            return None, bool(declared), num_classes, None
        name, corners = best
        return name, corners, num_classes, self._find_block(calls, name)

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

        if self.head is not None:
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

    @contextlib.contextmanager
    def stochastic(self, modules: Iterable[nn.Module]) -> Iterator["ModelAdapter"]:
        """Within: calls run ``modules`` (e.g. the dropout layers, for MC dropout) in training mode and
        every other module in eval mode."""
        previous, self._keep_training = self._keep_training, tuple(modules)
        try:
            yield self
        finally:
            self._keep_training = previous

    def close(self) -> None:
        """Remove the hooks (the adapter cannot be called afterwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captured.clear()
        self._open = False

    def __enter__(self) -> "ModelAdapter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor) -> SegOutput:
        """Run the model (eval mode) on ``images`` (B, 3, H, W) floats in [0, 1]; the head's view of it."""
        if not self._open:
            raise OodsegError("adapter: closed (hooks removed); create a new ModelAdapter")
        _check_images(images)
        self._captured.clear()
        try:
            with evaluation_mode(self.model, self._keep_training):
                output = self.model(images)
            captured = dict(self._captured)
        finally:
            self._captured.clear()
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        missing = [name for name in self.extra_heads if f"extra:{name}" not in captured]
        if missing:
            raise OodsegError(f"extra head {missing[0]!r} ({self.extra_heads[missing[0]]}): did not run in this forward pass")
        extras = {name: captured[f"extra:{name}"] for name in self.extra_heads}
        if self.logits_only:
            return SegOutput(logits=model_logits(output), image_size=image_size, align_corners=self.align_corners,
                             extras=extras)
        if "logits" not in captured:
            raise OodsegError(f"head {self.head_name!r}: did not run in this forward pass")
        block = None
        if self.capture_block and self._block is not None:
            conv, bn = self._block.conv, self._block.bn
            gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
            block = HeadBlock(input=captured["block_input"], conv_weight=conv.weight,
                              stride=tuple(conv.stride), padding=tuple(conv.padding), dilation=tuple(conv.dilation),
                              bn_scale=gamma / torch.sqrt(bn.running_var + bn.eps), pre_relu=captured["pre_relu"])
        return SegOutput(logits=captured["logits"], features=captured["z"], weight=self.head.weight.flatten(1),
                         bias=self.head.bias, image_size=image_size, block=block,
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

