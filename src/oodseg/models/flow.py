"""A multi-scale normalizing flow on image patches: the density model of the NFlowJS recipe (SPEC §2.2).

The flow is fully convolutional (Glow/RealNVP style): every level squeezes space into
channels (2×2 → 4×), runs ``steps_per_level`` steps of actnorm → invertible 1×1 conv →
affine coupling, and (except the last) factors out half of the channels as a latent
with a standard Gaussian prior. One flow therefore maps images of ANY size that is a
multiple of ``2**levels`` and samples patches of any such size.

Image space: pixels in ``[0, 1]``. Before the flow, ``x`` is mapped to logit space,
``y = logit(α + (1 - 2α)·x)`` with ``α = 0.05`` (RealNVP), and the log-determinant of
that map is included, so :meth:`Flow.log_prob` is a density on ``[0, 1]^D``.
:meth:`Flow.nll_bits_per_dim` treats inputs as 8-bit images: it adds uniform
dequantisation noise ``x̃ = (255·x + u)/256``, ``u ~ U(0, 1)``, and reports
``(-log p(x̃) + D·log 256) / (D·log 2)`` bits per dimension.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oodseg import distributed
from oodseg.errors import OodsegError

LOGIT_ALPHA = 0.05
"""α of the logit transform ``y = logit(α + (1-2α)x)`` (keeps ``x ∈ {0, 1}`` finite)."""


class ActNorm(nn.Module):
    """Per-channel affine ``y = (x + b)·exp(s)``, initialised from the first training batch.

    The data-dependent initialisation (zero mean, unit variance per channel) pools the
    statistics over all ranks when running distributed, so every rank starts identical. The
    standard deviation is floored at ``min_std`` so a nearly constant first batch (a patch of
    sky) cannot blow the scale up.
    """

    def __init__(self, channels: int, min_std: float = 0.1):
        super().__init__()
        self.min_std = min_std
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        stats = torch.stack([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3))]).double()
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float64, device=x.device)
        distributed.all_reduce_sum(stats)
        distributed.all_reduce_sum(count)
        mean = stats[0] / count
        std = (stats[1] / count - mean * mean).clamp_min(0.0).sqrt().clamp_min(self.min_std)
        self.bias.copy_(-mean.view_as(self.bias).to(x.dtype))
        self.log_scale.copy_((-torch.log(std)).view_as(self.log_scale).to(x.dtype))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) → (y, logdet (B,))."""
        if self.training and not bool(self.initialized):
            self._initialize(x)
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return (x + self.bias) * torch.exp(self.log_scale), logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    """Invertible 1×1 convolution with an LU-decomposed weight ``W = P·L·(U + diag(sign·exp(log_s)))``.

    ``log|det W| = Σ log_s`` per pixel, so the log-determinant costs O(C).
    """

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation.float())
        self.register_buffer("sign_s", torch.sign(diagonal).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("identity", torch.eye(channels))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(diagonal.abs()).float())

    def weight(self) -> Tensor:
        """(C, C) the current weight matrix."""
        lower = self.lower * self.lower_mask + self.identity
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = self.log_s.sum() * (x.shape[2] * x.shape[3])
        return F.conv2d(x, self.weight()[:, :, None, None]), logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return F.conv2d(y, torch.linalg.inv(self.weight())[:, :, None, None])


class AffineCoupling(nn.Module):
    """``y_b = x_b·exp(s(x_a)) + t(x_a)``, ``y_a = x_a``; ``s = bound·tanh(raw/bound)`` keeps scales in ``[e^-bound, e^bound]``.

    The last conv of the coupling network is zero-initialised, so a fresh coupling is the identity.
    """

    def __init__(self, channels: int, hidden: int, scale_bound: float = 2.0):
        super().__init__()
        self.keep = channels // 2
        changed = channels - self.keep
        self.scale_bound = scale_bound
        last = nn.Conv2d(hidden, 2 * changed, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.Conv2d(self.keep, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)

    def _shift_and_log_scale(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x_a)
        shift, raw = out[:, 0::2], out[:, 1::2]
        return shift, self.scale_bound * torch.tanh(raw / self.scale_bound)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.keep], x[:, self.keep:]
        shift, log_scale = self._shift_and_log_scale(x_a)
        y_b = x_b * torch.exp(log_scale) + shift
        return torch.cat([x_a, y_b], 1), log_scale.sum((1, 2, 3))

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = y[:, : self.keep], y[:, self.keep:]
        shift, log_scale = self._shift_and_log_scale(y_a)
        return torch.cat([y_a, (y_b - shift) * torch.exp(-log_scale)], 1)


class FlowStep(nn.Module):
    """One Glow step: actnorm → invertible 1×1 conv → affine coupling."""

    def __init__(self, channels: int, hidden: int, scale_bound: float):
        super().__init__()
        self.layers = nn.ModuleList([ActNorm(channels), InvertibleConv1x1(channels),
                                     AffineCoupling(channels, hidden, scale_bound)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, step_logdet = layer(x)
            logdet = logdet + step_logdet
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


def squeeze(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B, 4C, H/2, W/2), each 2×2 block into channels."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`: (B, 4C, H, W) → (B, C, 2H, 2W)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, 2 * h, 2 * w)


class Flow(nn.Module):
    """Multi-scale flow ``f``: images (B, C, H, W) in [0, 1] ↔ a list of Gaussian latents, one per level.

    Args:
        in_channels: image channels C.
        levels: number of squeeze levels; H and W must be multiples of ``2**levels``.
        steps_per_level: flow steps (actnorm, 1×1 conv, coupling) per level.
        hidden: width of the coupling networks.
        scale_bound: coupling log-scales are bounded to ``[-scale_bound, scale_bound]``.
    """

    def __init__(self, in_channels: int = 3, levels: int = 3, steps_per_level: int = 4,
                 hidden: int = 64, scale_bound: float = 2.0):
        super().__init__()
        if in_channels < 1 or levels < 1 or steps_per_level < 1 or hidden < 1:
            raise OodsegError("Flow: in_channels, levels, steps_per_level and hidden must be positive")
        self.in_channels = in_channels
        self.num_levels = levels
        self.config = {"in_channels": in_channels, "levels": levels, "steps_per_level": steps_per_level,
                       "hidden": hidden, "scale_bound": scale_bound}
        self.levels = nn.ModuleList()
        self.keep_channels: list[int] = []
        channels = in_channels
        for level in range(levels):
            channels *= 4
            self.levels.append(nn.ModuleList(FlowStep(channels, hidden, scale_bound)
                                             for _ in range(steps_per_level)))
            keep = channels // 2 if level < levels - 1 else channels
            self.keep_channels.append(keep)
            channels = keep

    @property
    def initialized(self) -> bool:
        """Whether the actnorm layers have had their data-dependent initialisation."""
        return all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))

    @torch.no_grad()
    def initialize(self, images: Tensor, generator: torch.Generator | None = None) -> None:
        """Data-dependent actnorm initialisation on random square crops of ``images`` (B, C, H, W) in [0, 1].

        The crop side is the largest multiple of ``2**levels`` up to half the shorter image side.
        """
        side = max(self.multiple, min(images.shape[-2:]) // 2 // self.multiple * self.multiple)
        crops, _ = random_crops(images, side, side, generator)
        noise = torch.rand(crops.shape, generator=generator, dtype=crops.dtype).to(crops.device)
        was_training = self.training
        self.train()
        self((crops * 255.0 + noise) / 256.0)
        self.train(was_training)

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (``2**levels``)."""
        return 2 ** self.num_levels

    def _check_size(self, height: int, width: int, what: str) -> None:
        if height <= 0 or width <= 0 or height % self.multiple or width % self.multiple:
            raise OodsegError(f"{what}: size {height}×{width} is not a positive multiple of "
                              f"2**levels = {self.multiple}")

    def latent_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(channels, h, w) of each level's latent for an image of ``height × width``."""
        self._check_size(height, width, "Flow.latent_shapes")
        shapes, channels = [], self.in_channels
        for level, keep in enumerate(self.keep_channels):
            channels, height, width = channels * 4, height // 2, width // 2
            split = channels - keep if level < self.num_levels - 1 else channels
            shapes.append((split, height, width))
            channels = keep
        return shapes

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Images (B, C, H, W) in [0, 1] → (latents ``[(B, c_i, h_i, w_i)]`` per level, log|det ∂z/∂x| (B,))."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise OodsegError(f"Flow: expected images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_size(x.shape[2], x.shape[3], "Flow")
        s = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * x
        y = torch.log(s) - torch.log1p(-s)
        logdet = (math.log(1 - 2 * LOGIT_ALPHA) - torch.log(s) - torch.log1p(-s)).sum((1, 2, 3))
        latents = []
        for level, steps in enumerate(self.levels):
            y = squeeze(y)
            for step in steps:
                y, step_logdet = step(y)
                logdet = logdet + step_logdet
            keep = self.keep_channels[level]
            if level < self.num_levels - 1:
                latents.append(y[:, keep:])
                y = y[:, :keep]
        latents.append(y)
        return latents, logdet

    def inverse(self, latents: list[Tensor]) -> Tensor:
        """Latents (as returned by :meth:`forward`) → images (B, C, H, W) in [0, 1]."""
        if len(latents) != self.num_levels:
            raise OodsegError(f"Flow.inverse: expected {self.num_levels} latents, got {len(latents)}")
        y = latents[-1]
        for level in reversed(range(self.num_levels)):
            if level < self.num_levels - 1:
                y = torch.cat([y, latents[level]], 1)
            for step in reversed(self.levels[level]):
                y = step.inverse(y)
            y = unsqueeze(y)
        return ((torch.sigmoid(y) - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)).clamp(0.0, 1.0)

    def log_prob(self, x: Tensor) -> Tensor:
        """(B,) log-density in nats of images ``x`` (B, C, H, W) in [0, 1] (density on ``[0, 1]^D``)."""
        latents, logdet = self(x)
        log_prior = sum((-0.5 * (z * z) - 0.5 * math.log(2 * math.pi)).sum((1, 2, 3)) for z in latents)
        return log_prior + logdet

    def nll(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) negative log-likelihood in nats of 8-bit images ``x`` (values k/255), uniformly dequantised."""
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        dequantized = (x * 255.0 + noise) / 256.0
        return -self.log_prob(dequantized) + x[0].numel() * math.log(256.0)

    def nll_bits_per_dim(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) :meth:`nll` in bits per dimension."""
        return self.nll(x, generator) / (x[0].numel() * math.log(2.0))

    def sample(self, n: int, height: int, width: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """(n, C, height, width) images in [0, 1] from ``z ~ N(0, temperature²·I)``; differentiable in the flow's parameters."""
        self._check_size(height, width, "Flow.sample")
        reference = next(self.parameters())
        latents = [temperature * torch.randn((n, *shape), generator=generator, device=reference.device,
                                             dtype=reference.dtype)
                   for shape in self.latent_shapes(height, width)]
        return self.inverse(latents)


def random_crops(images: Tensor, height: int, width: int,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One random ``height × width`` crop per image of (B, C, H, W); returns (crops, top-left corners (B, 2))."""
    b, _, h, w = images.shape
    if height > h or width > w:
        raise OodsegError(f"crop {height}×{width} is larger than the images ({h}×{w})")
    tops = torch.randint(0, h - height + 1, (b,), generator=generator)
    lefts = torch.randint(0, w - width + 1, (b,), generator=generator)
    crops = torch.stack([images[i, :, t:t + height, l:l + width]
                         for i, (t, l) in enumerate(zip(tops.tolist(), lefts.tolist()))])
    return crops, torch.stack([tops, lefts], 1)
