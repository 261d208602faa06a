"""Segment-wise meta classification and regression (SPEC §3): Meta-OoD false-positive removal and MetaSeg.

>>> from oodseg.meta import threshold_segments, segment_features, dispersion_maps
>>> ids, n = threshold_segments(entropy, 0.3, valid=label != 255)     # (H, W) int32, count
>>> feats = segment_features(ids, n, dispersion_maps(probs), probs)    # (n, 75) for 19 classes

The ``oodseg meta`` engine that reads datasets and checkpoints is :mod:`oodseg.workflows.meta`.
"""
import importlib

_EXPORTS = {
    "analysis": ["lars_ranking"],
    "features": ["SegmentFeatures", "dispersion_maps", "feature_names", "metaood_feature_names", "segment_features",
                 "segment_means"],
    "models": ["classification_scores", "cross_val_predict", "cv_splits", "make_model", "regression_score"],
    "segments": ["class_segments", "interior_mask", "threshold_segments"],
    "targets": ["segment_iou"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Import submodules on first use: scikit-learn (slow to import) loads only when a meta model is needed."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'oodseg.meta' has no attribute {name!r}")
    return getattr(importlib.import_module(f"oodseg.meta.{_MODULE_OF[name]}"), name)
