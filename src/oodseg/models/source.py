"""How a network rebuilt from a paper's code runs, so that oodseg runs it exactly as the source did.

Networks imported from published checkpoints (DeepWV3Plus and its RPL/DenseHybrid variants,
LDN-121) derive from :class:`SourceConventions` and set its class attributes. The adapter reads
``align_corners`` and ``extra_heads``; the importer records :meth:`SourceConventions.conventions`
in the checkpoint metadata.
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence


class SourceConventions:
    """Mixin with the source network's conventions (class attributes, not in the state dict).

    Attributes:
        align_corners: the ``align_corners`` of the bilinear upsampling the source applies to its
            logits; :class:`~oodseg.adapter.ModelAdapter` upsamples scores the same way.
        normalization: ``(mean, std)`` applied to the [0, 1] RGB input inside ``forward``, or None.
        output_stride: stride of the classifier's output relative to the input.
        head_name: module name of the final 1×1 classifier conv.
        extra_heads: ``{output name: module name}`` of further 1×1 heads whose outputs (at the
            classifier's resolution) scores may use, e.g. DenseHybrid's ``"ood_logits"``.
        source: where the architecture is defined (repository, file).
        rpl_residual_module: module whose input receives RPL's residual in the published layout (the
            classifier block), read by :class:`~oodseg.models.rpl.RPLModel`; empty: the classifier head.
    """

    align_corners: ClassVar[bool] = False
    normalization: ClassVar[tuple[Sequence[float], Sequence[float]] | None] = None
    output_stride: ClassVar[int] = 1
    head_name: ClassVar[str] = ""
    extra_heads: ClassVar[dict[str, str]] = {}
    source: ClassVar[str] = ""
    rpl_residual_module: ClassVar[str] = ""

    def conventions(self) -> dict[str, Any]:
        """JSON-ready summary: align_corners, normalization (mean/std lists or None), output_stride,
        head, extra_heads, source."""
        normalization = None
        if self.normalization is not None:
            mean, std = self.normalization
            normalization = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        return {"align_corners": bool(self.align_corners), "normalization": normalization,
                "output_stride": int(self.output_stride), "head": self.head_name,
                "extra_heads": dict(self.extra_heads), "source": self.source}
