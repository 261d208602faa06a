"""MaskAdapter: the view of a mask-classification network (Mask2Former, MaskFormer) that scores need (SPEC §9).

Such a network has no per-pixel classifier: per image it outputs class logits ``c`` (Q, C') per query
and mask logits ``m`` (Q, h, w). ``C' = K + 1`` (K classes, then no-object) or, for a model that
declares a negative class (UNO, Grcić et al.), ``C' = K + 2`` (K classes, the negative class, then
no-object). The per-pixel aggregates (SPEC §9) are

- ``P_k(x) = Σ_q softmax(c_q)_k · σ(m_q(x))`` for k < K: Mask2Former's semantic inference
  (facebookresearch/Mask2Former ``semantic_inference``; transformers'
  ``post_process_semantic_segmentation``), the softmax taken over all C' columns;
- ``L_k(x) = Σ_q c_qk · σ(m_q(x))`` for k < K: the same sum with the raw class logits.

The adapter returns a :class:`~oodseg.adapter.SegOutput` whose ``logits`` are ``log P`` (B, K, h, w),
so every logits-only score of SPEC §1 and the semantic prediction (argmax) apply to the usual
semantic inference: ``msp`` = 1 − max P / Σ P, ``max_logit`` = −log max P, ``energy`` = −log Σ P.
``extras`` carry ``"class_logits"`` (B, Q, C') and ``"mask_logits"`` (B, Q, h, w) for the mask scores
(:mod:`oodseg.scores.mask`), which also compute ``L``.

A model is a mask-classification model when it is one of transformers'
``Mask2FormerForUniversalSegmentation`` / ``MaskFormerForInstanceSegmentation``, or sets the attribute
``mask_classification = True`` (oodseg's :class:`~oodseg.models.maskformer.SmallMask2Former`). Its
output may be a tuple/list ``(class_logits, mask_logits, ...)``, or a mapping/ModelOutput with
``class_queries_logits`` / ``masks_queries_logits`` (transformers) or ``pred_logits`` / ``pred_masks``
(detectron2 Mask2Former). A negative class is declared by the model attribute ``negative_class = True``
(or ``MaskAdapter(model, negative_class=True)``).
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from oodseg.adapter import ModelAdapter, SegOutput, _check_images, evaluation_mode
from oodseg.conventions import IMAGENET_MEAN, IMAGENET_STD
from oodseg.errors import OodsegError

#: (class logits key, mask logits key) pairs recognised in a mapping output
OUTPUT_KEYS = (("class_queries_logits", "masks_queries_logits"), ("pred_logits", "pred_masks"))
#: transformers' mask-classification models (by class name; transformers is imported lazily)
TRANSFORMERS_MODELS = ("Mask2FormerForUniversalSegmentation", "MaskFormerForInstanceSegmentation")
#: floor of P before its logarithm (keeps ``log P`` finite where every mask is saturated at 0)
PROBABILITY_FLOOR = 1e-30
RESOLUTIONS = ("mask", "image")


def is_transformers_model(model: nn.Module) -> bool:
    """Whether ``model`` is one of transformers' Mask2Former / MaskFormer segmentation models."""
    return type(model).__name__ in TRANSFORMERS_MODELS and type(model).__module__.startswith("transformers.")


def is_mask_classification(model: object) -> bool:
    """Whether ``model`` outputs class and mask logits per query instead of per-pixel logits."""
    return isinstance(model, nn.Module) and (bool(getattr(model, "mask_classification", False))
                                            or is_transformers_model(model))


def query_outputs(output: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class_logits (B, Q, C'), mask_logits (B, Q, h, w))`` of a mask-classification model's output.

    Accepts a mapping/ModelOutput (keys :data:`OUTPUT_KEYS`) or a tuple/list whose first two entries
    are the two tensors; OodsegError (one line) for anything else or mismatched shapes.
    """
    if isinstance(output, Mapping):
        pair = next(((output.get(c), output.get(m)) for c, m in OUTPUT_KEYS if output.get(c) is not None), None)
        if pair is None:
            raise OodsegError(f"model output: no class logits (expected 'class_queries_logits' or 'pred_logits'), "
                              f"got keys {', '.join(map(repr, output))}")
        classes, masks = pair
    elif isinstance(output, (tuple, list)) and len(output) >= 1:
        classes, masks = output[0], output[1] if len(output) > 1 else None
    else:
        raise OodsegError(f"model output: expected class and mask logits per query, got {type(output).__name__}")
    if not isinstance(classes, torch.Tensor) or classes.dim() != 3:
        shape = tuple(classes.shape) if isinstance(classes, torch.Tensor) else type(classes).__name__
        raise OodsegError(f"model output: expected class logits of shape (B, Q, K+1), got {shape}")
    if not isinstance(masks, torch.Tensor) or masks.dim() != 4:
        shape = tuple(masks.shape) if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise OodsegError(f"model output: no mask logits of shape (B, Q, h, w) (got {shape}); "
                          "a mask-classification model returns class and mask logits per query")
    if classes.shape[:2] != masks.shape[:2]:
        raise OodsegError(f"model output: class logits {tuple(classes.shape)} and mask logits {tuple(masks.shape)} "
                          f"differ in batch or query count")
    return classes, masks


def aggregate(class_logits: torch.Tensor, mask_logits: torch.Tensor, num_classes: int,
              probabilities: bool = True) -> torch.Tensor:
    """Per-pixel aggregate of SPEC §9 over the first ``num_classes`` columns: (B, K, h, w).

    ``probabilities``: ``P_k = Σ_q softmax(c_q)_k σ(m_q)`` (softmax over all columns), else
    ``L_k = Σ_q c_qk σ(m_q)``. Args: class_logits (B, Q, C'), mask_logits (B, Q, h, w).
    """
    weights = class_logits.softmax(dim=-1) if probabilities else class_logits
    return torch.einsum("bqk,bqhw->bkhw", weights[..., :num_classes], mask_logits.sigmoid())


class MaskAdapter:
    """Wraps a mask-classification network: ``MaskAdapter(model)(images (B,3,H,W) in [0,1]) -> SegOutput``.

    ``SegOutput.logits`` = ``log P`` (B, K, h, w), ``extras["class_logits"]`` (B, Q, C') and
    ``extras["mask_logits"]`` (B, Q, h, w) (see the module docstring).

    Args:
        model: the network (see :func:`is_mask_classification` for the outputs it may return).
        negative_class: whether the class head has a negative class before no-object (C' = K + 2);
            default: the model's ``negative_class`` attribute, else False.
        resolution: ``"mask"`` (aggregates at the mask logits' resolution, stride 4 for Mask2Former)
            or ``"image"`` (mask logits first upsampled bilinearly, ``align_corners=False``, to the
            image size: Mask2Former's own semantic inference).
        normalize: ``(mean, std)`` applied to the images before the model, None for none, or
            ``"auto"``: ImageNet statistics for transformers' models (their image processors'
            default), none otherwise (oodseg's networks normalise inside).
        probe_size: size of the random image of the one probe forward pass that checks the outputs.
    """

    align_corners = False

    def __init__(self, model: nn.Module, negative_class: bool | None = None, resolution: str = "mask",
                 normalize: tuple | str | None = "auto", probe_size: tuple[int, int] = (64, 64)):
        if not isinstance(model, nn.Module):
            raise OodsegError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if resolution not in RESOLUTIONS:
            raise OodsegError(f"resolution: expected one of {', '.join(RESOLUTIONS)}, got {resolution!r}")
        self.model = model
        self.resolution = resolution
        self._keep_training: tuple[nn.Module, ...] = ()
        self.transformers = is_transformers_model(model)
        negative = getattr(model, "negative_class", False) if negative_class is None else negative_class
        if not isinstance(negative, bool):
            raise OodsegError(f"negative_class: must be True or False, got {negative!r}")
        self.negative_class = negative
        if normalize == "auto":
            normalize = (IMAGENET_MEAN, IMAGENET_STD) if self.transformers else None
        self._normalize = None if normalize is None else _statistics(normalize)
        self.num_queries, columns = self._probe(probe_size)
        self.num_classes = columns - 1 - int(self.negative_class)
        if self.num_classes < 1:
            raise OodsegError(f"model output: class logits have {columns} columns; need K >= 1 classes plus "
                              f"no-object{' and the negative class' if self.negative_class else ''}")

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._normalize is not None:
            mean, std = (t.to(device=images.device, dtype=images.dtype) for t in self._normalize)
            images = (images - mean) / std
        output = self.model(pixel_values=images) if self.transformers else self.model(images)
        return query_outputs(output)

    def _probe(self, probe_size: tuple[int, int]) -> tuple[int, int]:
        reference = next(iter(self.model.parameters()), None)
        device = reference.device if reference is not None else torch.device("cpu")
        probe = torch.rand((1, 3, *probe_size), generator=torch.Generator().manual_seed(0)).to(device)
        try:
            with evaluation_mode(self.model), torch.no_grad():
                classes, _ = self._forward(probe)
        except RuntimeError as exc:
            raise OodsegError(f"model {type(self.model).__name__}: probe forward pass on a {probe_size} image failed "
                              f"({str(exc).splitlines()[0]}); pass probe_size=(H, W)") from exc
        return int(classes.shape[1]), int(classes.shape[2])

    def __call__(self, images: torch.Tensor) -> SegOutput:
        """Run the model (eval mode, as ModelAdapter) on ``images`` (B, 3, H, W) floats in [0, 1]; the outputs keep
        their graph."""
        _check_images(images)
        with evaluation_mode(self.model, self._keep_training):
            classes, masks = self._forward(images)
        if classes.shape[1] != self.num_queries or classes.shape[2] != self.num_classes + 1 + int(self.negative_class):
            raise OodsegError(f"model output: class logits of shape {tuple(classes.shape)}, expected "
                              f"(B, {self.num_queries}, {self.num_classes + 1 + int(self.negative_class)}) "
                              "as in the probe pass")
        size = (int(images.shape[-2]), int(images.shape[-1]))
        if self.resolution == "image" and tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        probabilities = aggregate(classes.float(), masks.float(), self.num_classes)
        return SegOutput(logits=torch.log(probabilities.clamp_min(PROBABILITY_FLOOR)), image_size=size,
                         align_corners=self.align_corners,
                         extras={"class_logits": classes, "mask_logits": masks})

    #: within: calls run the given modules (MC dropout's dropouts) in training mode, the rest in eval mode
    stochastic = ModelAdapter.stochastic

    def close(self) -> None:
        """Nothing to release (no hooks); present so that the adapter is used like ModelAdapter."""

    def __enter__(self) -> "MaskAdapter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _statistics(normalize: object) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        mean, std = (torch.tensor([float(v) for v in values]).view(1, 3, 1, 1) for values in normalize)  # type: ignore
    except (TypeError, ValueError, RuntimeError) as exc:
        raise OodsegError(f"normalize: expected (mean, std) with 3 values each, \"auto\" or None, got {normalize!r}"
                          ) from exc
    if bool((std <= 0).any()):
        raise OodsegError(f"normalize: std must be positive, got {std.flatten().tolist()}")
    return mean, std
