"""Scores of mask-classification models (SPEC §9): ``rba``, ``m2a``, ``eam``, ``uno``, ``maskomaly``.

They read the per-query outputs that :class:`oodseg.mask_adapter.MaskAdapter` puts into
``SegOutput.extras``: ``"class_logits"`` c (B, Q, C') and ``"mask_logits"`` m (B, Q, h, w), with
``C' = K + 1`` (K classes, no-object last) or ``K + 2`` (K classes, the negative class, no-object) where
K is the channel count of ``SegOutput.logits`` (``log P``). ``p_q = softmax(c_q)`` over all C' columns.
Every map is (B, h, w) at the mask resolution, larger = more anomalous. Each formula was checked
against its authors' public code (cited per class).
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
#: histogram bins of the mask probabilities in [0, 1] behind Maskomaly's per-query AP
MASKOMALY_BINS = 1000


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

    Source: NazirNayal8/RbA ``support.py:get_RbA`` = ``-logits.tanh().sum(dim=0)`` where ``logits`` is the
    model's ``sem_seg`` from ``MaskFormer.semantic_inference`` = ``einsum(softmax(c)[..., :-1], σ(m))``,
    i.e. ``A = P`` (the default, ``aggregate="probabilities"``). SPEC §9 writes the raw-logit aggregate
    ``L``: ``aggregate="logits"``.
    """

    name = "rba"

    def __init__(self, *, aggregate: str = "probabilities") -> None:
        check_choice("rba: aggregate", aggregate, AGGREGATES)
        super().__init__(aggregate=aggregate)

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return -torch.tanh(aggregated(inputs, self.params["aggregate"])).sum(dim=1)


class M2A(MaskScorer):
    """``m2a``: Mask2Anomaly's ``1 − max_k P_k`` (Rai et al., ICCV 2023).

    Source: shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation
    ``anomaly_utils/anomaly_inference.py``: ``1 - max(sem_seg[0:19])`` of the semantic inference. Its
    flip test-time augmentation and mask refinement are not part of this score.
    """

    name = "m2a"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        return 1.0 - aggregated(inputs).amax(dim=1)


class EAM(MaskScorer):
    """``eam``: ensemble over masks, ``1 − Σ_q σ(m_q) · max_{k<K} p_qk`` (Grcić et al., 2023).

    Source: matejgrcic/Open-set-M2F ``mask2former/evaluation/ood_detection_evaluation.py``:
    ``s = softmax(c)[..., :-1].max(1)``; ``1 - (σ(m) * s).sum(0)``. With a negative class its column is
    dropped too (the max runs over the K known classes).
    """

    name = "eam"

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        num_classes = query_tensors(inputs)[2]
        confidence = class_probabilities(inputs)[..., :num_classes].amax(dim=-1)
        return 1.0 - torch.einsum("bq,bqhw->bhw", confidence, mask_probabilities(inputs))


class UNO(MaskScorer):
    """``uno``: ``−Σ_q σ(m_q) · (max_{k<K} p_qk − p_qn)`` with the negative class n (Delić et al., UNO).

    Source: matejgrcic/Open-set-M2F ``mask2former/evaluation/ood_detection_evaluation_UNO.py``:
    ``s = softmax(c)[..., :-2].max(1) - softmax(c)[..., -2]``; ``-(σ(m) * s).sum(0)``. Needs a model
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
    """``maskomaly``: the mask of the queries that segment anomalies, ranked on validation data.

    Maskomaly (Ackermann, Sakaridis, Yu, BMVC 2023, arXiv:2305.16972) observes that some learned queries
    of a Mask2Former consistently segment anomalies, finds them once on annotated validation data and
    scores with their masks. Here: :meth:`fit` ranks the queries by the average precision of ``σ(m_q)``
    against the anomaly labels (OoD labels 0 inlier / 1 anomaly / 255 void, resized to the mask
    resolution by nearest neighbour), each query's AP from a histogram of ``MASKOMALY_BINS`` bins over
    [0, 1] pooled over all frames (deterministic; equal APs keep the lower query index first). The score
    is ``max_{q ∈ top} σ(m_q)`` over the ``queries`` best-ranked queries. The paper's further refinement
    with the rejected masks' class scores is not reproduced. No query index is hard-coded.
    """

    name = "maskomaly"
    needs = frozenset({"masks", "fit"})
    pixelwise = False
    #: fitted on OoD labels (0 / 1 / 255) of annotated validation frames, not on trainIds
    fit_labels = "ood"

    def __init__(self, *, queries: int = 2) -> None:
        check_positive_int("maskomaly: queries", queries)
        super().__init__(queries=queries)
        self.ranking: torch.Tensor | None = None
        self.average_precision: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.ranking is not None

    def fit(self, outputs: Iterable[SegOutput], labels: Iterable[torch.Tensor] | None = None) -> "Maskomaly":
        """Rank the queries on ``outputs`` with OoD ``labels`` (B, H, W) in {0, 1, 255} (required)."""
        if labels is None:
            raise OodsegError("maskomaly: fitting needs OoD labels (0 inlier, 1 anomaly, 255 void)")
        label_iter = iter(labels)
        anomaly = inlier = None
        for index, out in enumerate(outputs):
            inputs = ScoreInputs(out)
            probabilities = mask_probabilities(inputs)
            label = _ood_label(next(label_iter, None), probabilities, index)
            bins = (probabilities * MASKOMALY_BINS).long().clamp_(0, MASKOMALY_BINS - 1)
            counts = [_histogram(bins, label == value) for value in (ANOMALY, INLIER)]
            if anomaly is None:
                anomaly, inlier = counts
            elif counts[0].shape != anomaly.shape:
                raise OodsegError(f"outputs[{index}]: {counts[0].shape[0]} queries, earlier outputs had "
                                  f"{anomaly.shape[0]}")
            else:
                anomaly, inlier = anomaly + counts[0], inlier + counts[1]
        if anomaly is None:
            raise OodsegError("maskomaly: no outputs to fit on")
        if next(label_iter, None) is not None:
            raise OodsegError("labels: more label batches than outputs")
        if int(anomaly[0].sum()) == 0:
            raise OodsegError("maskomaly: the fitting labels contain no anomaly pixels (label 1); fit on "
                              "validation frames with annotated anomalies")
        precision = binned_average_precision(anomaly, inlier)
        order = sorted(range(precision.shape[0]), key=lambda q: (-float(precision[q]), q))
        self.ranking = torch.tensor(order, dtype=torch.int64)
        self.average_precision = precision
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.require_fitted()
        return {"ranking": self.ranking.clone(), "average_precision": self.average_precision.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Maskomaly":
        ranking = state.get("ranking")
        if not isinstance(ranking, torch.Tensor) or ranking.dim() != 1 or \
                sorted(ranking.tolist()) != list(range(ranking.shape[0])):
            raise OodsegError("maskomaly: state 'ranking' must be a permutation of the query indices")
        self.ranking = ranking.long().clone()
        self.average_precision = state.get("average_precision")
        return self

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        probabilities = mask_probabilities(inputs)
        if probabilities.shape[1] != self.ranking.shape[0]:
            raise OodsegError(f"maskomaly: fitted on a model with {self.ranking.shape[0]} queries, this output has "
                              f"{probabilities.shape[1]}")
        top = self.ranking[: self.params["queries"]].to(probabilities.device)
        return probabilities.index_select(1, top).amax(dim=1)


def binned_average_precision(positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """(Q,) average precision per row from (Q, bins) counts of positive / negative pixels per score bin.

    Thresholds run from the highest bin down; pixels in one bin share one threshold (as tied scores do
    in ``sklearn.metrics.average_precision_score``): ``AP = Σ_t (R_t − R_{t−1}) · P_t``.
    """
    positives, negatives = positives.flip(1).double(), negatives.flip(1).double()
    true_positives, false_positives = positives.cumsum(1), negatives.cumsum(1)
    precision = true_positives / (true_positives + false_positives).clamp_min(1.0)
    recall_step = positives / positives.sum(1, keepdim=True).clamp_min(1.0)
    return (recall_step * precision).sum(1).float()


def _histogram(bins: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """(Q, MASKOMALY_BINS) counts of ``bins`` (B, Q, h, w) over the pixels ``selected`` (B, h, w)."""
    chosen = bins.permute(1, 0, 2, 3)[:, selected]  # (Q, N)
    offsets = torch.arange(chosen.shape[0], device=bins.device)[:, None] * MASKOMALY_BINS
    counts = torch.bincount((chosen + offsets).flatten(), minlength=chosen.shape[0] * MASKOMALY_BINS)
    return counts.view(chosen.shape[0], MASKOMALY_BINS).cpu()


def _ood_label(label: object, probabilities: torch.Tensor, index: int) -> torch.Tensor:
    """OoD label (B, H, W) in {0, 1, 255} resized (nearest) to the masks' (B, h, w)."""
    if label is None:
        raise OodsegError(f"labels: fewer label batches than outputs (ran out at output {index})")
    if not isinstance(label, torch.Tensor) or label.dim() != 3 or label.shape[0] != probabilities.shape[0]:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise OodsegError(f"labels[{index}]: expected OoD labels (B, H, W) with B={probabilities.shape[0]}, got {shape}")
    if label.is_floating_point() or label.dtype == torch.bool:
        raise OodsegError(f"labels[{index}]: expected integer OoD labels, got {label.dtype}")
    values = set(torch.unique(label).tolist()) - {INLIER, ANOMALY, VOID}
    if values:
        raise OodsegError(f"labels[{index}]: values {sorted(values)[:5]} are not OoD labels (0 inlier, 1 anomaly, "
                          "255 void)")
    size = tuple(probabilities.shape[2:])
    if tuple(label.shape[1:]) != size:
        label = F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0]
    return label.long().to(probabilities.device)
