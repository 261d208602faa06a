"""Evaluation metrics: pixel (AP/AUROC/FPR95), component (sIoU/PPV/F1), calibration (ECE/AuSE),
segmentation (mIoU, open-mIoU) and Meta-OoD detection errors; all follow update/compute/merge."""
from oodseg.metrics.calibration import CalibrationMetrics
from oodseg.metrics.component import ComponentMetrics, component_metrics
from oodseg.metrics.detection import DetectionMetrics, meta_ood_errors
from oodseg.metrics.pixel import PixelMetrics, pixel_metrics
from oodseg.metrics.segmentation import SegmentationMetrics

__all__ = ["CalibrationMetrics", "ComponentMetrics", "DetectionMetrics", "PixelMetrics", "SegmentationMetrics",
           "component_metrics", "meta_ood_errors", "pixel_metrics"]
