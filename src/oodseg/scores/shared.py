"""Validated score inputs and the intermediate results that several scores share.

:class:`ScoreInputs` wraps one :class:`~oodseg.adapter.SegOutput` (or a spatial tile of it).
Each shared quantity — the shifted exponentials behind softmax/logsumexp, the top-2 logits,
``‖z‖``, ``W z``, ``log|z|`` — is computed on first use and then reused by every scorer
that asks for it, so a batch of scores costs little more than the most expensive one.
For float32 CPU logits the per-pixel softmax quantities come from one pass of the C kernel
in :mod:`oodseg.scores.native` when it is built. All maps are float32 at the head's resolution ``(h, w)``.
"""
from __future__ import annotations

from functools import cached_property

import torch

from oodseg.adapter import HeadBlock, SegOutput
from oodseg.errors import OodsegError
from oodseg.scores import native

#: Floor for norms before dividing or taking a logarithm (keeps all-zero features finite).
NORM_FLOOR = 1e-12


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise :class:`OodsegError` if ``tensor`` holds NaN or ±Inf.

    A channel sum is finite exactly when every summand is (barring overflow past 1e37), and
    ``sum`` is by far the fastest full pass over a channel-first tensor; ``Σ 0·x`` is NaN exactly
    when some ``x`` is not finite, and cheaper than ``isfinite(x).all()``.
    """
    summary = tensor.sum(dim=1) if tensor.dim() > 1 else tensor
    if bool(summary.mul(0.0).sum().isnan()):
        raise OodsegError(f"{name}: contains NaN or Inf values")


def as_float(name: str, tensor: object, rank: int, shape_hint: str) -> torch.Tensor:
    """``tensor`` as float32 after checking it is a tensor of rank ``rank``; ``shape_hint`` names the axes."""
    if not isinstance(tensor, torch.Tensor):
        raise OodsegError(f"{name}: expected a tensor {shape_hint}, got {type(tensor).__name__}")
    if tensor.dim() != rank:
        raise OodsegError(f"{name}: expected shape {shape_hint}, got {tuple(tensor.shape)}")
    if not (tensor.is_floating_point()):
        raise OodsegError(f"{name}: expected a floating-point tensor, got {tensor.dtype}")
    return tensor.float()


class ScoreInputs:
    """Lazily computed, validated quantities of one head output.

    Args:
        out: the head output; ``logits`` (B, C, h, w) is required, ``features`` (B, D, h, w),
            ``weight`` (C, D), ``bias`` (C,) and ``block`` only for the scores that need them.
        checked: skip the NaN/Inf checks (for tiles of an output already checked as a whole).
    """

    def __init__(self, out: SegOutput, checked: bool = False):
        if not isinstance(out, SegOutput):
            raise OodsegError(f"scores: expected a SegOutput, got {type(out).__name__}")
        self.out = out
        self.checked = checked

    def _check_finite(self, name: str, tensor: torch.Tensor) -> None:
        if not self.checked:
            check_finite(name, tensor)

    # --- validated inputs -------------------------------------------------------------
    @cached_property
    def logits(self) -> torch.Tensor:
        """(B, C, h, w) float32 logits, checked finite."""
        if self.out.logits is None:
            raise OodsegError("SegOutput.logits: missing; this score needs the logits (B, C, h, w)")
        logits = as_float("logits", self.out.logits, 4, "(B, C, h, w)")
        if logits.shape[1] < 2:
            raise OodsegError(f"logits: need at least 2 classes, got shape {tuple(logits.shape)}")
        self._check_finite("logits", logits)
        return logits

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1] if self.out.logits is not None else self.weight.shape[0]

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(B, h, w) of the score maps: from the logits (any class count, e.g. K = 1 of a mask-classification
        model, whose scores read the per-query outputs), else from the features."""
        source = (as_float("logits", self.out.logits, 4, "(B, C, h, w)") if self.out.logits is not None
                  else self.features)
        return (source.shape[0], *source.shape[2:])

    @cached_property
    def features(self) -> torch.Tensor:
        """(B, D, h, w) float32 head input ``z``, checked against the logits' batch and size."""
        if self.out.features is None:
            raise OodsegError("SegOutput.features: missing; this score needs the head input features z "
                              "(a ModelAdapter gives them unless the model has no 1×1 classifier head: logits-only)")
        features = as_float("features", self.out.features, 4, "(B, D, h, w)")
        logits = self.out.logits
        if isinstance(logits, torch.Tensor) and logits.dim() == 4 and (
                features.shape[0] != logits.shape[0] or features.shape[2:] != logits.shape[2:]):
            raise OodsegError(f"features: shape {tuple(features.shape)} does not match logits "
                              f"{tuple(logits.shape)} in batch or spatial size")
        self._check_finite("features", features)
        return features

    @cached_property
    def weight(self) -> torch.Tensor:
        """(C, D) float32 head weight (a (C, D, 1, 1) conv weight is accepted)."""
        weight = self.out.weight
        if weight is None:
            raise OodsegError("SegOutput.weight: missing; this score needs the 1×1 head weight W (C, D)")
        if isinstance(weight, torch.Tensor) and weight.dim() == 4 and weight.shape[2:] == (1, 1):
            weight = weight[:, :, 0, 0]
        weight = as_float("weight", weight, 2, "(C, D)")
        classes = self.logits.shape[1] if self.out.logits is not None else weight.shape[0]
        width = self.features.shape[1] if self.out.features is not None else weight.shape[1]
        if weight.shape != (classes, width):
            raise OodsegError(f"weight: shape {tuple(weight.shape)} does not match (C, D) = ({classes}, {width}) "
                              f"of logits and features")
        self._check_finite("weight", weight)
        return weight

    @cached_property
    def bias(self) -> torch.Tensor:
        """(C,) float32 head bias; zeros when the head has none."""
        if self.out.bias is None:
            return self.weight.new_zeros(self.num_classes)
        bias = as_float("bias", self.out.bias, 1, "(C,)")
        if bias.shape[0] != self.num_classes:
            raise OodsegError(f"bias: {bias.shape[0]} entries for {self.num_classes} classes")
        self._check_finite("bias", bias)
        return bias

    @cached_property
    def block(self) -> HeadBlock:
        """The ``conv → BN → ReLU`` block feeding the head."""
        if self.out.block is None:
            raise OodsegError("SegOutput.block: missing; second-to-last-layer scores need the conv→BN→ReLU "
                              "block feeding the head (ModelAdapter captures it when present)")
        return self.out.block

    def extra(self, name: str) -> torch.Tensor:
        """(B, K, h, w) float32 output of the model's extra head ``name`` (``SegOutput.extras``), checked
        finite and pixel-aligned with the logits."""
        cache = self.__dict__.setdefault("_extras", {})
        if name not in cache:
            tensor = self.out.extras.get(name)
            if tensor is None:
                raise OodsegError(f"SegOutput.extras[{name!r}]: missing; this score needs a model with that head "
                                  f"(e.g. DenseHybrid's deepwv3plus-th or ldn121, seen through ModelAdapter)")
            tensor = as_float(name, tensor, 4, "(B, K, h, w)")
            logits = self.logits
            if tensor.shape[0] != logits.shape[0] or tensor.shape[2:] != logits.shape[2:]:
                raise OodsegError(f"{name}: shape {tuple(tensor.shape)} does not match logits {tuple(logits.shape)} "
                                  f"in batch or spatial size")
            self._check_finite(name, tensor)
            cache[name] = tensor
        return cache[name]

    def memo(self, key: tuple, make) -> torch.Tensor:
        """``make()`` computed once per ``key`` for these inputs (lets scorers share derived maps)."""
        cache = self.__dict__.setdefault("_memo", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    # --- softmax family ---------------------------------------------------------------
    # Per-pixel quantities come from the C kernel (oodseg.scores.native) when it applies to the
    # logits, else from torch; the full (B, C, h, w) tensors (``tempered_exp``, ``softmax``,
    # ``log_softmax``) always from torch.
    @cached_property
    def _native(self) -> bool:
        return native.usable(self.logits)

    def _summary(self, temperature: float, mixture: bool = False) -> dict[str, torch.Tensor]:
        """The kernel's maps for ``temperature`` (see :func:`native.softmax_summary`), one pass each.

        ``T = 1`` also carries the class extremes; the mixture entropy is added when first asked for.
        """
        cache = self.__dict__.setdefault("_summaries", {})
        if temperature not in cache or (mixture and "mixture_entropy" not in cache[temperature]):
            cache[temperature] = native.softmax_summary(self.logits, temperature, extremes=temperature == 1.0,
                                                        mixture=mixture)
        return cache[temperature]

    @cached_property
    def max_logit(self) -> torch.Tensor:
        """(B, h, w) largest logit ``m``."""
        return self._summary(1.0)["max_logit"] if self._native else self.logits.amax(dim=1)

    @cached_property
    def shifted(self) -> torch.Tensor:
        """(B, C, h, w) ``l - m`` (≤ 0; the max class is 0)."""
        return self.logits - self.max_logit.unsqueeze(1)

    def tempered_exp(self, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(e, s)``: (B, C, h, w) ``exp((l - m)/T)`` in (0, 1] and (B, h, w) its class sum ``s ≥ 1``.

        ``T = 2`` reuses ``T = 1`` as ``sqrt(exp(l - m))`` (exact up to entries below 1e-19,
        which cannot move a sum that is ≥ 1).
        """
        cache = self.__dict__.setdefault("_tempered", {})
        if temperature not in cache:
            if temperature == 1.0:
                exp = torch.exp(self.shifted)
            elif temperature == 2.0:
                exp = torch.sqrt(self.tempered_exp(1.0)[0])
            else:
                exp = torch.exp(self.shifted * (1.0 / temperature))
            cache[temperature] = (exp, exp.sum(dim=1))
        return cache[temperature]

    def exp_sum(self, temperature: float = 1.0) -> torch.Tensor:
        """(B, h, w) ``s = Σ exp((l - m)/T) ≥ 1``."""
        return self._summary(temperature)["exp_sum"] if self._native else self.tempered_exp(temperature)[1]

    def logsumexp(self, temperature: float = 1.0) -> torch.Tensor:
        """(B, h, w) ``logsumexp(l / T)``."""
        return self.max_logit / temperature + torch.log(self.exp_sum(temperature))

    def softmax(self, temperature: float = 1.0) -> torch.Tensor:
        """(B, C, h, w) ``softmax(l / T)``."""
        exp, total = self.tempered_exp(temperature)
        return exp / total.unsqueeze(1)

    def softmax_entropy(self, temperature: float = 1.0) -> torch.Tensor:
        """(B, h, w) ``-Σ q log q`` of ``q = softmax(l/T)`` in nats, without forming ``log q``.

        ``-Σ q log q = log s - Σ e·(l-m)/T / s`` with ``e, s`` from :meth:`tempered_exp`.
        """
        if self._native:
            return self._summary(temperature)["entropy"]
        cache = self.__dict__.setdefault("_entropy", {})
        if temperature not in cache:
            exp, total = self.tempered_exp(temperature)
            weighted = (exp * self.shifted).sum(dim=1) / temperature
            cache[temperature] = (torch.log(total) - weighted / total).clamp_min(0.0)
        return cache[temperature]

    def mixture_entropy(self, temperature: float = 1.0) -> torch.Tensor:
        """(B, h, w) ``-Σ M log M`` of the mixture ``M = (1/C + softmax(l/T))/2`` in nats."""
        if self._native:
            return self._summary(temperature, mixture=True)["mixture_entropy"]
        exp, total = self.tempered_exp(temperature)
        mixture = torch.addcmul(exp.new_tensor(0.5 / exp.shape[1]), exp, (0.5 / total).unsqueeze(1))
        return -(mixture * torch.log(mixture)).sum(dim=1)  # mixture ≥ 1/(2C) > 0

    @cached_property
    def log_softmax(self) -> torch.Tensor:
        """(B, C, h, w) ``log softmax(l)``."""
        _, total = self.tempered_exp(1.0)
        return self.shifted - torch.log(total).unsqueeze(1)

    @cached_property
    def top2(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, h, w) largest and second-largest logit (equal on ties), one pass over the classes.

        ``torch.topk`` over a channel-first dimension is an order of magnitude slower on CPU.
        """
        if self._native:
            return self.max_logit, self._summary(1.0)["second_logit"]
        logits = self.logits
        first, second = torch.maximum(logits[:, 0], logits[:, 1]), torch.minimum(logits[:, 0], logits[:, 1])
        for c in range(2, logits.shape[1]):
            channel = logits[:, c]
            second = torch.maximum(second, torch.minimum(first, channel))
            first = torch.maximum(first, channel)
        return first, second

    @cached_property
    def argmax(self) -> torch.Tensor:
        """(B, h, w) int64 predicted class ``ĉ`` (first maximal class, as ``torch.argmax``).

        A running maximum with its index, one pass over the classes (3× faster than ``torch.argmax``
        over a channel-first dimension on CPU).
        """
        if self._native:
            return self._summary(1.0)["argmax"]
        logits = self.logits
        best, index = logits[:, 0], torch.zeros_like(logits[:, 0])
        for c in range(1, logits.shape[1]):
            channel = logits[:, c]
            index = torch.where(channel > best, float(c), index)  # strict: ties keep the first class
            best = torch.maximum(best, channel)
        return index.long()

    # --- feature family ---------------------------------------------------------------
    @cached_property
    def feature_norm(self) -> torch.Tensor:
        """(B, h, w) Euclidean norm ``‖z‖₂``."""
        return torch.linalg.vector_norm(self.features, ord=2, dim=1)

    @cached_property
    def _relative_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(r, log a)``: (B, D, h, w) ``r = |z| / a`` in [0, 1] and (B, h, w) ``log a``, ``a = max_d |z_d|``."""
        magnitude = self.features.abs()
        largest = magnitude.amax(dim=1, keepdim=True).clamp_min(torch.finfo(magnitude.dtype).tiny)
        return magnitude / largest, torch.log(largest[:, 0])

    @cached_property
    def _log_relative_features(self) -> torch.Tensor:
        """(B, D, h, w) ``log(|z| / max|z|) ≤ 0`` (−inf where ``z = 0``)."""
        return torch.log(self._relative_features[0])

    def log_feature_pnorm(self, p: float) -> torch.Tensor:
        """(B, h, w) ``log ‖z‖_p = log max|z| + log(Σ (|z|/max|z|)^p)/p`` (no overflow, also for 0 < p < 1).

        ``log|z|`` is taken once and shared by every p; p = 1 and p = 2 need no transcendental pass.
        """
        cache = self.__dict__.setdefault("_log_pnorm", {})
        if p not in cache:
            relative, log_largest = self._relative_features
            if p == 1.0:
                powered = relative
            elif p == 2.0:
                powered = relative * relative
            else:
                powered = torch.exp(self._log_relative_features * p)
            cache[p] = log_largest + torch.log(powered.sum(dim=1)) / p
        return cache[p]

    @cached_property
    def projection(self) -> torch.Tensor:
        """(B, C, h, w) ``W z`` without bias."""
        return torch.einsum("cd,bdhw->bchw", self.weight, self.features)

    @cached_property
    def class_weight_norm(self) -> torch.Tensor:
        """(C,) ``ω_c = ‖W_c‖₂`` (floored at ``NORM_FLOOR``)."""
        return torch.linalg.vector_norm(self.weight, ord=2, dim=1).clamp_min(NORM_FLOOR)


def channel_logsumexp(values: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over dim 1 of ``values`` (B, C, ...) → (B, ...); max-shifted, fast on channel-first data."""
    top = values.amax(dim=1)
    top = top.masked_fill(torch.isneginf(top), 0.0)  # all entries -inf: the result stays -inf, not NaN
    return top + torch.log(torch.exp(values - top.unsqueeze(1)).sum(dim=1))


def log_pnorm(log_abs: torch.Tensor, p: float) -> torch.Tensor:
    """``log (Σ |x|^p)^{1/p}`` over dim 1 from ``log|x|`` (−inf entries count as zeros; no overflow)."""
    return channel_logsumexp(log_abs * p) / p
