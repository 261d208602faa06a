"""oodseg: pixel-wise out-of-distribution detection for semantic segmentation.

Scores every pixel of a segmentation network's output for being outside the training
classes, trains networks to be better at it, filters false detections segment by
segment, and evaluates it exactly as the SegmentMeIfYouCan and Fishyscapes benchmarks do.
"""
from oodseg.errors import OodsegError

__version__ = "0.1.0"
__all__ = ["OodsegError", "__version__"]
