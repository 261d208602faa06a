"""Evaluation metrics: pixel (AP/AUROC/FPR95), component (sIoU/PPV/F1), calibration (ECE/AuSE),
segmentation (mIoU, open-mIoU) and Meta-OoD detection errors; all follow update/compute/merge/all_reduce
with the state they declare on :class:`~oodseg.metrics.state.MetricState`."""
from oodseg.metrics.calibration import CalibrationMetrics
from oodseg.metrics.component import ComponentMetrics, component_metrics
from oodseg.metrics.detection import DetectionMetrics, meta_ood_errors
from oodseg.metrics.pixel import PixelMetrics, pixel_metrics
from oodseg.metrics.segmentation import SegmentationMetrics
from oodseg.metrics.state import MetricState

__all__ = ["CalibrationMetrics", "ComponentMetrics", "DetectionMetrics", "MetricState", "PixelMetrics",
           "SegmentationMetrics",
           "component_metrics", "meta_ood_errors", "pixel_metrics"]
