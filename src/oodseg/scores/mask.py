"""Scores of mask-classification models (SPEC §9): ``rba``, ``m2a``, ``eam``, ``uno``, ``maskomaly``.

They read the per-query outputs that :class:`oodseg.mask_adapter.MaskAdapter` puts into
``SegOutput.extras``: ``"class_logits"`` c (B, Q, C') and ``"mask_logits"`` m (B, Q, h, w), with
``C' = K + 1`` (K classes, no-object last) or ``K + 2`` (K classes, the negative class, no-object) where
K is the channel count of ``SegOutput.logits`` (``log P``). ``p_q = softmax(c_q)`` over all C' columns.
Every map is (B, h, w) at the mask resolution, larger = more anomalous. Each formula was checked
against its authors' public code (cited per class, with the commit read). Those detectron2 codes upsample
the mask logits bilinearly to the image before σ: ``MaskAdapter(resolution="image")`` (``score_dataset(...,
resolution="image")``); the default ``"mask"`` is transformers' post-processing order.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from oodseg.adapter import SegOutput
from oodseg.conventions import ANOMALY, INLIER, VOID
from oodseg.errors import OodsegError
from oodseg.mask_adapter import aggregate
from oodseg.scores.base import FittedScorer, Scorer, check_choice, check_positive_int
from oodseg.scores.shared import ScoreInputs, as_float, check_finite

AGGREGATES = ("probabilities", "logits")
#: Mask2Anomaly's mask refinement (anomaly_inference.py + semantic_inference of its maskformer_model.py):
#: the range of Cityscapes trainIds (inclusive) whose confident queries veto anomalies (building … sky)
M2A_REFINE_CLASSES = (2, 10)
#: ... a query counts when its top softmax score (over all columns, not no-object) exceeds this
M2A_REFINE_CONFIDENCE = 0.95
#: ... and vetoes the pixels where its score · σ(m_q) reaches this, once at least M2A_REFINE_MIN_QUERIES count
M2A_REFINE_MASK = 0.5
M2A_REFINE_MIN_QUERIES = 2
#: Maskomaly (jan-ackermann/Maskomaly maskomaly/model.py, anomaly_overlap.py): a query's mask is "on" above
#: this σ(m) when ranking, an inlier query rejects above this class confidence, masks of two inlier queries
#: above this σ(m) mark a border, and the map is this weight · rejection + (1 − weight) · anomaly term
MASKOMALY_MASK_THRESHOLD = 0.9
MASKOMALY_REJECT_CONFIDENCE = 0.7
MASKOMALY_BORDER = 0.1
MASKOMALY_WEIGHT = 0.6


def query_tensors(inputs: ScoreInputs) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(class_logits (B, Q, C'), mask_logits (B, Q, h, w), K)`` float32, validated once per inputs."""
    def load() -> tuple[torch.Tensor, torch.Tensor, int]:
        extras = inputs.out.extras
        if "class_logits" not in extras or "mask_logits" not in extras:
            raise OodsegError("SegOutput.extras['class_logits'/'mask_logits']: missing; this score needs a "
                              "mask-classification model seen through oodseg.mask_adapter.MaskAdapter")
        classes = as_float("class_logits", extras["class_logits"], 3, "(B, Q, C')")
        masks = as_float("mask_logits", extras["mask_logits"], 4, "(B, Q, h, w)")
        logits = as_float("logits", inputs.out.logits, 4, "(B, K, h, w)")  # K = 1 allowed here
        if masks.shape[0] != logits.shape[0] or masks.shape[2:] != logits.shape[2:] or classes.shape[:2] != masks.shape[:2]:
            raise OodsegError(f"mask_logits: shape {tuple(masks.shape)} does not match class_logits "
                              f"{tuple(classes.shape)} and logits {tuple(logits.shape)}")
        num_classes = logits.shape[1]
        if classes.shape[2] - num_classes not in (1, 2):
            raise OodsegError(f"class_logits: {classes.shape[2]} columns for K={num_classes} classes; expected K+1 "
                              "(no-object) or K+2 (negative class, no-object)")
        check_finite("class_logits", classes)
        check_finite("mask_logits", masks)
        return classes, masks, num_classes

    return inputs.memo(("mask", "queries"), load)


def mask_probabilities(inputs: ScoreInputs) -> torch.Tensor:
    """(B, Q, h, w) ``σ(m_q)``."""
    return inputs.memo(("mask", "sigmoid"), lambda: query_tensors(inputs)[1].sigmoid())


def class_probabilities(inputs: ScoreInputs) -> torch.Tensor:
    """(B, Q, C') ``softmax(c_q)`` over all columns."""
    return inputs.memo(("mask", "softmax"), lambda: query_tensors(inputs)[0].softmax(dim=-1))


def aggregated(inputs: ScoreInputs, kind: str = "probabilities") -> torch.Tensor:
    """(B, K, h, w) SPEC §9 aggregate: ``P`` (``"probabilities"``) or ``L`` (``"logits"``)."""
    classes, masks, num_classes = query_tensors(inputs)
    return inputs.memo(("mask", "aggregate", kind),
                       lambda: aggregate(classes, masks, num_classes, probabilities=kind == "probabilities"))


class MaskScorer(Scorer):
    """Base of the scores on per-query outputs (whole maps: each pixel sums over every query)."""

    needs = frozenset({"masks"})
    pixelwise = False


class RbA(MaskScorer):
    """``rba``: Rejected by All, ``−Σ_k tanh(A_k)`` (Nayal et al., ICCV 2023).

    Source: NazirNayal8/RbA @cf263d5 ``support.py:get_RbA`` (and ``evaluate_ood.py``): minus the sum of
    tanh over the channels of the model's ``sem_seg``, which ``MaskFormer.semantic_inference``
    (``mask2former/maskformer_model.py``) builds from the softmax over all columns with no-object dropped
    after it, times σ(m_q) summed over queries, i.e. ``A = P`` (the default, ``aggregate="probabilities"``;
    its outlier loss in ``criterion.py`` scores the same ``P``). SPEC §9 writes the raw-logit aggregate
    ``L``: ``aggregate="logits"``.
    """

    name = "rba"

    def __init__(self, *, aggregate: str = "probabilities") -> None:
        check_choice("rba: aggregate", aggregate, AGGREGATES)
        super().__init__(aggregate=aggregate)

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -torch.tanh(aggregated(inputs, self.params["aggregate"])).sum(dim=1)


class M2A(MaskScorer):
    """``m2a``: Mask2Anomaly's ``1 − max_k P_k`` with its mask refinement (Rai et al., ICCV 2023).

    Source: shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation @5c84283
    ``anomaly_utils/anomaly_inference.py``: ``1 − max`` over the channels of its ``semantic_inference``
    (``mask2former/maskformer_model.py``), which appends to the K channels of P one channel
    ``s_q σ(m_q)`` per query q whose top softmax score ``s_q`` (over all columns) exceeds 0.95 for a
    class in ``refine_from … refine_to`` (Cityscapes trainIds 2–10, building … sky). Those channels never
    exceed ``max_k P_k``, so the map is ``1 − max_k P_k``; when at least two such queries exist, the pixels where
    ``max_q s_q σ(m_q) ≥ 0.5`` are set to 0 (the refinement; ``refine=false``: SPEC §9's plain
    ``1 − max_k P_k``). Its average with the horizontally flipped image (test-time augmentation) is not
    part of this score.
    """

    name = "m2a"

    def __init__(self, *, refine: bool = True, refine_from: int = M2A_REFINE_CLASSES[0],
                 refine_to: int = M2A_REFINE_CLASSES[1]) -> None:
        if not isinstance(refine, bool):
            raise OodsegError(f"m2a: refine must be true or false, got {refine!r}")
        for name, value in (("refine_from", refine_from), ("refine_to", refine_to)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OodsegError(f"m2a: {name} must be a class index >= 0, got {value!r}")
        if refine_to < refine_from:
            raise OodsegError(f"m2a: refine_to ({refine_to}) is below refine_from ({refine_from})")
        super().__init__(refine=refine, refine_from=refine_from, refine_to=refine_to)

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        anomaly = 1.0 - aggregated(inputs).amax(dim=1)
        if not self.params["refine"]:
            return anomaly
        num_classes = query_tensors(inputs)[2]
        first, last = self.params["refine_from"], self.params["refine_to"]
        if last >= num_classes:
            raise OodsegError(f"m2a: refine_to={last} names a class beyond the model's K={num_classes}; pass "
                              "refine_from/refine_to for this model's classes or refine=false")
        confidence, label = class_probabilities(inputs).max(dim=-1)  # (B, Q) over all columns
        refining = (confidence > M2A_REFINE_CONFIDENCE) & (label >= first) & (label <= last)
        vote = (confidence[..., None, None] * mask_probabilities(inputs) * refining[..., None, None]).amax(dim=1)
        veto = (vote >= M2A_REFINE_MASK) & (refining.sum(dim=1) >= M2A_REFINE_MIN_QUERIES)[:, None, None]
        return anomaly.masked_fill(veto, 0.0)


class EAM(MaskScorer):
    """``eam``: ensemble over masks, ``1 − Σ_q σ(m_q) · max_{k<K} p_qk`` (Grcić et al., 2023).

    Source: matejgrcic/Open-set-M2F @1269a3e ``mask2former/evaluation/ood_detection_evaluation.py``
    (``DenseOODDetectionEvaluator.process``): softmax over all columns, no-object dropped after it, max
    over the rest, times σ(m_q), summed over all queries (no filtering), ``1 −`` that. With a negative
    class its column is dropped too (the max runs over the K known classes; the public code has no
    such model for EAM).

    ``Σ_q σ(m_q) max_{k<K} p_qk = max_k P_k + D`` with ``D ≥ 0`` the confident mass of the queries voting for
    other classes, so ``eam = 1 − max_k P_k − D``: EAM assumes the masks of confident queries tile the image.
    On the small Mask2Former of the demo (seed 0, 1500 steps) they overlap (``Σ_q σ(m_q)`` 1.76 on
    anomaly pixels, 1.58 on inliers) and ``D`` is 0.42 on anomalies against 0.16 on inliers (``D``
    alone: AUROC 79.8 %), so EAM falls below chance there (AP 4.4 %, AUROC 41.0 %; at
    ``resolution="image"`` 6.3 % / 48.8 %; exact sweep): a property of that model, not a bug.
    """

    name = "eam"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        num_classes = query_tensors(inputs)[2]
        confidence = class_probabilities(inputs)[..., :num_classes].amax(dim=-1)
        return 1.0 - torch.einsum("bq,bqhw->bhw", confidence, mask_probabilities(inputs))


class UNO(MaskScorer):
    """``uno``: ``−Σ_q σ(m_q) · (max_{k<K} p_qk − p_qn)`` with the negative class n (Delić et al., UNO).

    Source: matejgrcic/Open-set-M2F @1269a3e ``mask2former/evaluation/ood_detection_evaluation_UNO.py``:
    softmax over all columns; per query the top probability of the K known classes minus the negative
    class's, times σ(m_q), summed over all queries and negated. Needs a model
    with a negative class (class head K + 2 columns; declared by the model attribute
    ``negative_class = True`` or ``MaskAdapter(model, negative_class=True)``).
    """

    name = "uno"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        classes, _, num_classes = query_tensors(inputs)
        if classes.shape[2] != num_classes + 2:
            raise OodsegError("uno: the model has no negative class (class logits need K+2 columns: classes, "
                              "negative, no-object); declare one with negative_class=True")
        probabilities = class_probabilities(inputs)
        margin = probabilities[..., :num_classes].amax(dim=-1) - probabilities[..., num_classes]
        return -torch.einsum("bq,bqhw->bhw", margin, mask_probabilities(inputs))


class Maskomaly(FittedScorer):
    """``maskomaly``: Maskomaly (Ackermann, Sakaridis, Yu, BMVC 2023, arXiv:2305.16972).

    Source: jan-ackermann/Maskomaly @48326cc. :meth:`fit` is ``maskomaly/anomaly_overlap.py``: per frame
    and query, the IoU of the mask ``σ(m_q) > 0.9`` with the anomaly pixels (void excluded; OoD labels
    0 / 1 / 255 resized to the mask resolution by nearest neighbour), averaged over the frames with
    anomaly pixels; queries ranked by it (equal values keep the lower index first). The score is
    ``get_soft_mask`` of ``maskomaly/model.py`` with ``p_q = softmax(c_q)`` over all columns,
    ``s_q = max p_q`` and "inlier" queries those whose top column is not no-object:

    - anomaly term ``A = max_{q ∈ top} s_q σ(m_q)`` over the ``queries`` (4) best-ranked queries;
    - rejection ``R = min(1, min_q (1 − s_q σ(m_q)))`` over inlier queries with ``s_q > 0.7``, set to 0
      where the masks of two inlier queries both exceed ``σ = 0.1`` (borders);
    - map ``0.6 R + 0.4 A``.

    The public code's queries are hard-coded for its Swin-L Cityscapes model (anomaly queries
    49, 31, 83, 32 and two "ground" queries 19, 24 that reject as well); here the anomaly queries
    are fitted and the ground step, which needs road-labelled queries, is left out.
    """

    name = "maskomaly"
    needs = frozenset({"masks", "fit"})
    pixelwise = False
    #: fitted on OoD labels (0 / 1 / 255) of annotated validation frames, not on trainIds
    fit_labels = "ood"

    def __init__(self, *, queries: int = 4) -> None:
        check_positive_int("maskomaly: queries", queries)
        super().__init__(queries=queries)
        self.ranking: torch.Tensor | None = None
        self.overlap: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.ranking is not None

    def fit(self, outputs: Iterable[SegOutput], labels: Iterable[torch.Tensor] | None = None) -> "Maskomaly":
        """Rank the queries on ``outputs`` with OoD ``labels`` (B, H, W) in {0, 1, 255} (required)."""
        if labels is None:
            raise OodsegError("maskomaly: fitting needs OoD labels (0 inlier, 1 anomaly, 255 void)")
        label_iter = iter(labels)
        total: torch.Tensor | None = None  # per query: the sum of its IoUs over the frames with anomalies
        frames = 0
        for index, out in enumerate(outputs):
            masks = mask_probabilities(ScoreInputs(out)) > MASKOMALY_MASK_THRESHOLD  # (B, Q, h, w)
            label = _ood_label(next(label_iter, None), masks, index)
            if total is not None and masks.shape[1] != total.shape[0]:
                raise OodsegError(f"outputs[{index}]: {masks.shape[1]} queries, earlier outputs had {total.shape[0]}")
            anomaly, void = (label == ANOMALY)[:, None], (label == VOID)[:, None]
            hits = (masks & anomaly).flatten(2).sum(-1).double()
            union = (masks & ~void).flatten(2).sum(-1).double() + anomaly.flatten(2).sum(-1).double() - hits
            counted = anomaly.flatten(1).any(1)  # frames with anomaly pixels
            iou = (hits / union.clamp_min(1.0))[counted].sum(0).cpu()
            total = iou if total is None else total + iou
            frames += int(counted.sum())
        if total is None:
            raise OodsegError("maskomaly: no outputs to fit on")
        if next(label_iter, None) is not None:
            raise OodsegError("labels: more label batches than outputs")
        if frames == 0:
            raise OodsegError("maskomaly: the fitting labels contain no anomaly pixels (label 1); fit on "
                              "validation frames with annotated anomalies")
        overlap = total / frames
        self.ranking = torch.tensor(sorted(range(overlap.shape[0]), key=lambda q: (-float(overlap[q]), q)),
                                    dtype=torch.int64)
        self.overlap = overlap.float()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.require_fitted()
        return {"ranking": self.ranking.clone(), "overlap": self.overlap.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Maskomaly":
        ranking = state.get("ranking")
        if not isinstance(ranking, torch.Tensor) or ranking.dim() != 1 or \
                sorted(ranking.tolist()) != list(range(ranking.shape[0])):
            raise OodsegError("maskomaly: state 'ranking' must be a permutation of the query indices")
        self.ranking = ranking.long().clone()
        self.overlap = state.get("overlap")
        return self

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        probabilities = mask_probabilities(inputs)
        if probabilities.shape[1] != self.ranking.shape[0]:
            raise OodsegError(f"maskomaly: fitted on a model with {self.ranking.shape[0]} queries, this output has "
                              f"{probabilities.shape[1]}")
        classes = class_probabilities(inputs)
        confidence, label = classes.max(dim=-1)  # (B, Q) over all columns
        inlier = label != classes.shape[-1] - 1
        weighted = confidence[..., None, None] * probabilities  # s_q σ(m_q)
        top = self.ranking[: self.params["queries"]].to(probabilities.device)
        anomaly = weighted.index_select(1, top).amax(dim=1)
        rejecting = (inlier & (confidence > MASKOMALY_REJECT_CONFIDENCE))[..., None, None]
        rejection = (1.0 - weighted).masked_fill(~rejecting, 1.0).amin(dim=1)
        border = ((probabilities > MASKOMALY_BORDER) & inlier[..., None, None]).sum(dim=1) >= 2
        rejection = rejection.masked_fill(border, 0.0)
        return MASKOMALY_WEIGHT * rejection + (1.0 - MASKOMALY_WEIGHT) * anomaly


def _ood_label(label: object, masks: torch.Tensor, index: int) -> torch.Tensor:
    """OoD label (B, H, W) in {0, 1, 255} resized (nearest) to the masks' (B, h, w)."""
    if label is None:
        raise OodsegError(f"labels: fewer label batches than outputs (ran out at output {index})")
    if not isinstance(label, torch.Tensor) or label.dim() != 3 or label.shape[0] != masks.shape[0]:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise OodsegError(f"labels[{index}]: expected OoD labels (B, H, W) with B={masks.shape[0]}, got {shape}")
    if label.is_floating_point() or label.dtype == torch.bool:
        raise OodsegError(f"labels[{index}]: expected integer OoD labels, got {label.dtype}")
    values = set(torch.unique(label).tolist()) - {INLIER, ANOMALY, VOID}
    if values:
        raise OodsegError(f"labels[{index}]: values {sorted(values)[:5]} are not OoD labels (0 inlier, 1 anomaly, "
                          "255 void)")
    size = tuple(masks.shape[2:])
    if tuple(label.shape[1:]) != size:
        label = F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0]
    return label.long().to(masks.device)
