"""SmallMask2Former: a Mask2Former-shaped mask-classification network small enough to train on a CPU.

Architecture name ``"small-mask2former"``. Parts (named as in Mask2Former, Cheng et al. CVPR 2022):

- ``backbone``: :class:`~oodseg.models.small.TinyBackbone` (stride-4 and stride-16 features);
- ``pixel_decoder``: an FPN step — the stride-16 features projected to ``hidden`` channels, upsampled and
  added to the projected stride-4 features, then ``conv3×3 → BN → ReLU`` → per-pixel embeddings
  (B, hidden, H/4, W/4);
- a light transformer decoder: ``query_feat`` / ``query_pos`` (Q learned queries); each layer does
  masked cross-attention to the stride-16 features (Mask2Former's masked attention: a query only sees
  the cells where its previous mask has σ ≥ 0.5, all cells when that set is empty), self-attention
  among the queries and a feed-forward block;
- heads: ``class_embed`` (Linear to K+1 outputs, or K+2 with ``negative_class``: K classes, the
  negative class, no-object) and ``mask_embed`` (3-layer MLP) whose output is dotted with the per-pixel
  embeddings to give the mask logits.

``forward(images (B,3,H,W) in [0,1])`` returns a dict: ``class_queries_logits`` (B, Q, C'),
``masks_queries_logits`` (B, Q, H/4, W/4), ``aux_outputs`` (the predictions of the earlier decoder
layers, for deep supervision) and ``logits`` = ``log P`` (B, K, H/4, W/4), the semantic inference of
SPEC §9, so that per-pixel code (validation mIoU, ``model_logits``) reads it like any segmentation
network. Scores read it through :class:`oodseg.mask_adapter.MaskAdapter`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from oodseg.mask_adapter import PROBABILITY_FLOOR, aggregate
from oodseg.models.blocks import ConvBNReLU, ImageNormalize
from oodseg.models.small import TinyBackbone


class DecoderLayer(nn.Module):
    """Masked cross-attention → self-attention → FFN, each with a residual and LayerNorm (post-norm)."""

    def __init__(self, hidden: int, heads: int, feedforward: int):
        super().__init__()
        self.cross = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.self_attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(hidden, feedforward), nn.ReLU(inplace=True), nn.Linear(feedforward, hidden))
        self.norms = nn.ModuleList([nn.LayerNorm(hidden) for _ in range(3)])
        self.heads = heads

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, memory: torch.Tensor, memory_pos: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """queries, query_pos (B, Q, D); memory, memory_pos (B, N, D); attention_mask (B, Q, N) bool, True = blocked."""
        blocked = attention_mask.repeat_interleave(self.heads, dim=0)
        attended, _ = self.cross(queries + query_pos, memory + memory_pos, memory, attn_mask=blocked,
                                 need_weights=False)
        queries = self.norms[0](queries + attended)
        attended, _ = self.self_attn(queries + query_pos, queries + query_pos, queries, need_weights=False)
        queries = self.norms[1](queries + attended)
        return self.norms[2](queries + self.ffn(queries))


class SmallMask2Former(nn.Module):
    """Mask2Former-style network (see the module docstring); ~0.5 M parameters by default.

    Args:
        num_classes: K, the known classes.
        queries: Q, the number of learned queries.
        widths: backbone stage widths (as :class:`~oodseg.models.small.SmallSegNet`).
        hidden: width of the pixel embeddings, queries and attention.
        decoder_layers, heads, feedforward: the transformer decoder.
        negative_class: add UNO's negative class before no-object (class head K+2 outputs).
    """

    #: read by :func:`oodseg.mask_adapter.is_mask_classification`
    mask_classification = True

    def __init__(self, num_classes: int = 19, queries: int = 24, widths: Sequence[int] = (24, 48, 96, 128),
                 hidden: int = 64, decoder_layers: int = 2, heads: int = 4, feedforward: int = 128,
                 negative_class: bool = False):
        super().__init__()
        if num_classes < 1 or queries < 1 or decoder_layers < 1:
            raise ValueError(f"num_classes, queries and decoder_layers must be >= 1, got {num_classes}, {queries}, "
                             f"{decoder_layers}")
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        self.num_classes = int(num_classes)
        self.negative_class = bool(negative_class)
        self.normalize = ImageNormalize()
        self.backbone = TinyBackbone(tuple(widths))
        self.low_proj = nn.Conv2d(self.backbone.low_channels, hidden, 1)
        self.high_proj = nn.Conv2d(self.backbone.high_channels, hidden, 1)
        self.pixel_decoder = ConvBNReLU(hidden, hidden)
        self.memory_pos = nn.Conv2d(2, hidden, 1)  # positional embedding of the (y, x) cell coordinates
        self.query_feat = nn.Embedding(queries, hidden)
        self.query_pos = nn.Embedding(queries, hidden)
        self.layers = nn.ModuleList([DecoderLayer(hidden, heads, feedforward) for _ in range(decoder_layers)])
        self.decoder_norm = nn.LayerNorm(hidden)
        self.class_embed = nn.Linear(hidden, num_classes + 1 + int(self.negative_class))
        self.mask_embed = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, hidden))

    def _predict(self, queries: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (B, Q, C'), mask logits (B, Q, h, w)) of decoder state ``queries`` (B, Q, D)."""
        queries = self.decoder_norm(queries)
        masks = torch.einsum("bqd,bdhw->bqhw", self.mask_embed(queries), pixels)
        return self.class_embed(queries), masks

    def forward(self, images: torch.Tensor) -> dict:
        low, high = self.backbone(self.normalize(images))
        memory_map = self.high_proj(high)
        pixels = self.pixel_decoder(self.low_proj(low) + F.interpolate(memory_map, size=low.shape[-2:],
                                                                       mode="bilinear", align_corners=False))
        batch, width, rows, cols = memory_map.shape
        grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, rows, device=images.device),
                                          torch.linspace(-1, 1, cols, device=images.device), indexing="ij"))
        memory_pos = self.memory_pos(grid[None].to(memory_map.dtype)).flatten(2).transpose(1, 2).expand(batch, -1, -1)
        memory = memory_map.flatten(2).transpose(1, 2)
        queries = self.query_feat.weight[None].expand(batch, -1, -1)
        query_pos = self.query_pos.weight[None].expand(batch, -1, -1)
        predictions = [self._predict(queries, pixels)]
        for layer in self.layers:
            previous = F.interpolate(predictions[-1][1].detach(), size=(rows, cols), mode="bilinear",
                                     align_corners=False)
            blocked = (previous.sigmoid() < 0.5).flatten(2)
            blocked[blocked.all(dim=-1)] = False  # a query with an empty mask attends everywhere
            queries = layer(queries, query_pos, memory, memory_pos, blocked)
            predictions.append(self._predict(queries, pixels))
        classes, masks = predictions[-1]
        probabilities = aggregate(classes.float(), masks.float(), self.num_classes)
        return {"logits": torch.log(probabilities.clamp_min(PROBABILITY_FLOOR)), "class_queries_logits": classes,
                "masks_queries_logits": masks,
                "aux_outputs": [{"class_queries_logits": c, "masks_queries_logits": m} for c, m in predictions[:-1]]}
