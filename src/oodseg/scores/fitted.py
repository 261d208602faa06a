"""Fitted scores: ``sml`` (standardized max logits) and ``mahalanobis`` (SPEC §1).

Both are fitted on in-distribution head outputs. Pixels are grouped by their ground-truth
class when labels are given (labels (B, H, W) are resized to the head resolution by nearest
neighbour; 254 and 255 are skipped) and by the predicted class otherwise.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from oodseg.adapter import SegOutput
from oodseg.conventions import OUTLIER, VOID
from oodseg.errors import OodsegError
from oodseg.scores.base import FittedScorer, check_positive, check_positive_int
from oodseg.scores.shared import ScoreInputs

#: Semantic label values that are never fitted (void, pasted outlier).
SKIPPED_LABELS = (OUTLIER, VOID)
#: Floor of a class's max-logit standard deviation.
STD_FLOOR = 1e-6


def fitting_pixels(outputs: Iterable[SegOutput], labels: Iterable[torch.Tensor] | None
                   ) -> Iterator[tuple[ScoreInputs, torch.Tensor]]:
    """Yield ``(inputs, classes)`` per output; ``classes`` (B, h, w) int64 is the fitting class, -1 = skip."""
    label_iter = iter(labels) if labels is not None else None
    for index, out in enumerate(outputs):
        inputs = ScoreInputs(out)
        logits = inputs.logits
        if label_iter is None:
            yield inputs, inputs.argmax
            continue
        try:
            label = next(label_iter)
        except StopIteration:
            raise OodsegError(f"labels: fewer label batches than outputs (ran out at output {index})") from None
        yield inputs, _classes_from_labels(label, logits, index)
    if label_iter is not None and next(label_iter, None) is not None:
        raise OodsegError("labels: more label batches than outputs")


def _classes_from_labels(label: object, logits: torch.Tensor, index: int) -> torch.Tensor:
    if not isinstance(label, torch.Tensor) or label.dim() != 3 or label.shape[0] != logits.shape[0]:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise OodsegError(f"labels[{index}]: expected (B, H, W) with B={logits.shape[0]}, got {shape}")
    if label.is_floating_point() or label.dtype == torch.bool:
        raise OodsegError(f"labels[{index}]: expected integer class ids, got {label.dtype}")
    label = label.long()
    num_classes = logits.shape[1]
    unknown = (label >= num_classes) & (label != SKIPPED_LABELS[0]) & (label != SKIPPED_LABELS[1]) | (label < 0)
    if bool(unknown.any()):
        values = torch.unique(label[unknown])[:5].tolist()
        raise OodsegError(f"labels[{index}]: unknown label values {values} (expected 0..{num_classes - 1}, 254, 255)")
    if label.shape[1:] != logits.shape[2:]:
        label = F.interpolate(label[:, None].float(), size=tuple(logits.shape[2:]), mode="nearest")[:, 0].long()
    return label.masked_fill(label >= num_classes, -1)


# --- SML ----------------------------------------------------------------------------------

def suppress_boundaries(score: torch.Tensor, prediction: torch.Tensor, width: int, iterations: int) -> torch.Tensor:
    """SML boundary suppression (Jung et al. 2021): replace scores on class boundaries, iteratively.

    At iteration ``i`` the boundary is every pixel with another predicted class within
    ``w_i = width - i·(width // iterations)`` pixels (Chebyshev distance); each boundary pixel
    takes the mean score of the non-boundary pixels in its 3×3 neighbourhood (kept when none).
    Args: score (B, h, w) float, prediction (B, h, w) int. Returns (B, h, w).
    """
    score = score.unsqueeze(1)
    classes = prediction.unsqueeze(1).float()
    ones = score.new_ones(1, 1, 3, 3)
    for i in range(iterations):
        reach = max(1, width - i * (width // iterations))
        padded = F.pad(classes, (reach,) * 4, mode="replicate")
        window = 2 * reach + 1
        highest = F.max_pool2d(padded, window, stride=1)
        lowest = -F.max_pool2d(-padded, window, stride=1)
        interior = (highest == lowest).float()
        total = F.conv2d(score * interior, ones, padding=1)
        count = F.conv2d(interior, ones, padding=1)
        replace = (interior == 0) & (count > 0)
        score = torch.where(replace, total / count.clamp_min(1.0), score)
    return score[:, 0]


def dilated_smoothing(score: torch.Tensor, kernel_size: int, sigma: float, dilation: int) -> torch.Tensor:
    """Dilated Gaussian smoothing of (B, h, w) ``score`` (SML), reflect padding (replicate on small maps)."""
    offsets = torch.arange(kernel_size, dtype=score.dtype, device=score.device) - (kernel_size - 1) / 2
    profile = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = torch.outer(profile, profile)
    kernel = (kernel / kernel.sum()).view(1, 1, kernel_size, kernel_size)
    pad = dilation * (kernel_size - 1) // 2
    mode = "reflect" if pad < min(score.shape[-2:]) else "replicate"
    padded = F.pad(score.unsqueeze(1), (pad,) * 4, mode=mode)
    return F.conv2d(padded, kernel, dilation=dilation)[:, 0]


class StandardizedMaxLogit(FittedScorer):
    """``sml``: ``-(l_ĉ - μ_ĉ)/σ_ĉ`` with the max-logit mean/std per class fitted on ID pixels.

    Classes without fitted pixels use the statistics pooled over all fitted pixels.
    Options (SML paper): ``boundary_suppression`` (width 4, 4 iterations) and
    ``dilated_smoothing`` (7×7 Gaussian, σ = 1, dilation 6).
    """

    name = "sml"
    needs = frozenset({"logits", "fit"})

    def __init__(self, *, boundary_suppression: bool = False, boundary_width: int = 4, boundary_iterations: int = 4,
                 dilated_smoothing: bool = False, smoothing_kernel: int = 7, smoothing_sigma: float = 1.0,
                 smoothing_dilation: int = 6) -> None:
        for flag, value in (("boundary_suppression", boundary_suppression), ("dilated_smoothing", dilated_smoothing)):
            if not isinstance(value, bool):
                raise OodsegError(f"sml: {flag} must be True or False, got {value!r}")
        for option, value in (("boundary_width", boundary_width), ("boundary_iterations", boundary_iterations),
                              ("smoothing_kernel", smoothing_kernel), ("smoothing_dilation", smoothing_dilation)):
            check_positive_int(f"sml: {option}", value)
        if smoothing_kernel % 2 == 0:
            raise OodsegError(f"sml: smoothing_kernel must be odd, got {smoothing_kernel}")
        super().__init__(boundary_suppression=boundary_suppression, boundary_width=boundary_width,
                         boundary_iterations=boundary_iterations, dilated_smoothing=dilated_smoothing,
                         smoothing_kernel=smoothing_kernel,
                         smoothing_sigma=check_positive("sml: smoothing_sigma", smoothing_sigma),
                         smoothing_dilation=smoothing_dilation)
        self.pixelwise = not (boundary_suppression or dilated_smoothing)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def fit(self, outputs: Iterable[SegOutput], labels: Iterable[torch.Tensor] | None = None) -> "StandardizedMaxLogit":
        """Fit per-class max-logit mean and std (population) on every valid pixel of ``outputs``."""
        count = total = squares = None
        for inputs, classes in fitting_pixels(outputs, labels):
            num_classes = inputs.num_classes
            if count is None:
                count = torch.zeros(num_classes, dtype=torch.float64)
                total, squares = torch.zeros_like(count), torch.zeros_like(count)
            elif num_classes != count.shape[0]:
                raise OodsegError(f"sml: outputs have {num_classes} classes, earlier ones {count.shape[0]}")
            valid = classes >= 0
            values = inputs.max_logit[valid].double().cpu()
            index = classes[valid].cpu()
            count.index_add_(0, index, torch.ones_like(values))
            total.index_add_(0, index, values)
            squares.index_add_(0, index, values * values)
        if count is None or count.sum() == 0:
            raise OodsegError("sml: no valid pixels to fit on")
        pooled_mean = total.sum() / count.sum()
        pooled_var = squares.sum() / count.sum() - pooled_mean ** 2
        seen = count > 0
        mean = torch.where(seen, total / count.clamp_min(1), pooled_mean)
        var = torch.where(seen, squares / count.clamp_min(1) - mean ** 2, pooled_var)
        self.mean, self.std, self.count = mean.float(), var.clamp_min(0).sqrt().float().clamp_min(STD_FLOOR), count
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.require_fitted()
        return {"mean": self.mean.clone(), "std": self.std.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "StandardizedMaxLogit":
        mean, std = _state_tensor(state, "mean", 1), _state_tensor(state, "std", 1)
        if mean.shape != std.shape or not bool((std > 0).all()):
            raise OodsegError("sml state: 'mean' and 'std' must have equal (C,) shapes and std > 0")
        count = state.get("count", torch.full_like(mean, float("nan"))).double()
        self.mean, self.std, self.count = mean.float(), std.float(), count
        return self

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        if self.mean.shape[0] != inputs.num_classes:
            raise OodsegError(f"sml: fitted on {self.mean.shape[0]} classes, logits have {inputs.num_classes}")
        predicted = inputs.argmax
        flat = predicted.reshape(-1)  # index_select: 4× faster than advanced indexing on CPU
        mean = torch.index_select(self.mean.to(predicted.device), 0, flat).view_as(predicted)
        std = torch.index_select(self.std.to(predicted.device), 0, flat).view_as(predicted)
        score = -(inputs.max_logit - mean) / std
        p = self.params
        if p["boundary_suppression"]:
            score = suppress_boundaries(score, predicted, p["boundary_width"], p["boundary_iterations"])
        if p["dilated_smoothing"]:
            score = dilated_smoothing(score, p["smoothing_kernel"], p["smoothing_sigma"], p["smoothing_dilation"])
        return score


# --- Mahalanobis -------------------------------------------------------------------------

class Mahalanobis(FittedScorer):
    """``mahalanobis``: ``min_c (z - μ_c)ᵀ Σ⁻¹ (z - μ_c)`` with class means and one shared covariance.

    Fitted on up to ``pixels_per_image`` random valid pixels per image (``seed`` fixes them).
    ``Σ`` is the pooled within-class covariance (divisor N); its inverse is the pseudo-inverse
    (eigenvalues below ``1e-10·λ_max`` dropped), applied as a whitening ``A = Λ^{-1/2} Vᵀ`` so
    the distance is ``‖A z - A μ_c‖²`` without cancellation. Classes without pixels are skipped.
    Features without any variance (all-zero ``z``: a zero covariance) are refused when fitting.
    """

    name = "mahalanobis"
    needs = frozenset({"features", "fit"})

    def __init__(self, *, pixels_per_image: int = 1000, seed: int = 0) -> None:
        check_positive_int("mahalanobis: pixels_per_image", pixels_per_image)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise OodsegError(f"mahalanobis: seed must be an integer, got {seed!r}")
        super().__init__(pixels_per_image=pixels_per_image, seed=seed)
        self.means: torch.Tensor | None = None
        self.covariance: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.transform: torch.Tensor | None = None
        self.centres: torch.Tensor | None = None

    @property
    def fitted(self) -> bool:
        return self.means is not None

    def fit(self, outputs: Iterable[SegOutput], labels: Iterable[torch.Tensor] | None = None) -> "Mahalanobis":
        """Accumulate class sums and the feature scatter in float64 over sub-sampled pixels."""
        generator = torch.Generator().manual_seed(self.params["seed"])
        count = sums = scatter = None
        for inputs, classes in fitting_pixels(outputs, labels):
            features = inputs.features
            if count is None:
                count = torch.zeros(inputs.num_classes, dtype=torch.float64)
                sums = torch.zeros(inputs.num_classes, features.shape[1], dtype=torch.float64)
                scatter = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64)
            elif sums.shape != (inputs.num_classes, features.shape[1]):
                raise OodsegError(f"mahalanobis: outputs with {inputs.num_classes} classes × {features.shape[1]} "
                                  f"features, earlier ones {tuple(sums.shape)}")
            for image, image_classes in zip(features, classes):
                flat_classes = image_classes.reshape(-1).cpu()
                valid = torch.nonzero(flat_classes >= 0).squeeze(1)
                if valid.numel() > self.params["pixels_per_image"]:
                    pick = torch.randperm(valid.numel(), generator=generator)[: self.params["pixels_per_image"]]
                    valid = valid[pick]
                samples = image.reshape(image.shape[0], -1)[:, valid.to(image.device)].T.double().cpu()
                index = flat_classes[valid]
                count.index_add_(0, index, torch.ones(index.shape[0], dtype=torch.float64))
                sums.index_add_(0, index, samples)
                scatter += samples.T @ samples
        if count is None or count.sum() == 0:
            raise OodsegError("mahalanobis: no valid pixels to fit on")
        means = sums / count.clamp_min(1).unsqueeze(1)
        within = scatter - (means.T * count) @ means
        self._set(means, within / count.sum(), count)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.require_fitted()
        return {"means": self.means.clone(), "covariance": self.covariance.clone(), "count": self.count.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Mahalanobis":
        means, covariance = _state_tensor(state, "means", 2), _state_tensor(state, "covariance", 2)
        count = _state_tensor(state, "count", 1)
        if covariance.shape != (means.shape[1],) * 2 or count.shape[0] != means.shape[0]:
            raise OodsegError(f"mahalanobis state: means {tuple(means.shape)}, covariance {tuple(covariance.shape)} "
                              f"and count {tuple(count.shape)} do not fit together")
        self._set(means.double(), covariance.double(), count.double())
        return self

    def _set(self, means: torch.Tensor, covariance: torch.Tensor, count: torch.Tensor) -> None:
        """Store the statistics and derive the whitening ``A (R, D)`` with ``AᵀA = Σ⁺`` and ``A μ_c``."""
        covariance = (covariance + covariance.T) / 2
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        keep = eigenvalues > 1e-10 * eigenvalues.abs().max().clamp_min(1e-300)
        if not bool(keep.any()):
            raise OodsegError(f"mahalanobis: the fitted features have zero covariance ({int(count.sum())} pixels, "
                              f"e.g. all-zero head features z); the distance is undefined")
        transform = eigenvectors[:, keep].T / eigenvalues[keep].sqrt().unsqueeze(1)
        self.means, self.covariance, self.count = means, covariance, count
        self.transform = transform.float()
        self.centres = (means[count > 0] @ transform.T).float()

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        features = inputs.features
        if features.shape[1] != self.means.shape[1]:
            raise OodsegError(f"mahalanobis: fitted on {self.means.shape[1]} features, SegOutput has {features.shape[1]}")
        transform, centres = self.transform.to(features.device), self.centres.to(features.device)
        projected = torch.einsum("rd,bdhw->brhw", transform, features)
        best = torch.full_like(projected[:, 0], math.inf)
        for centre in centres:
            best = torch.minimum(best, (projected - centre.view(1, -1, 1, 1)).square().sum(dim=1))
        return best


def _state_tensor(state: dict, key: str, rank: int) -> torch.Tensor:
    value = state.get(key) if isinstance(state, dict) else None
    if not isinstance(value, torch.Tensor) or value.dim() != rank or not bool(torch.isfinite(value).all()):
        raise OodsegError(f"state_dict: '{key}' missing, not a rank-{rank} tensor, or not finite")
    return value
