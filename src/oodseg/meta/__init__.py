"""Segment-wise meta classification and regression (SPEC §3): Meta-OoD false-positive removal and MetaSeg.

>>> from oodseg.meta import threshold_segments, segment_features, dispersion_maps
>>> ids, n = threshold_segments(entropy, 0.3, valid=label != 255)     # (H, W) int32, count
>>> feats = segment_features(ids, n, dispersion_maps(probs), probs)    # (n, 75) for 19 classes
>>> result = run_meta(open_dataset("smiyc-anomaly", root), probs=ckpt, scores_dir=scores)  # oodseg.meta JSON
"""
from oodseg.meta.analysis import lars_ranking
from oodseg.meta.features import (SegmentFeatures, dispersion_maps, feature_names, metaood_feature_names,
                                  segment_features, segment_means)
from oodseg.meta.models import classification_scores, cross_val_predict, cv_splits, make_model, regression_score
from oodseg.meta.pipeline import parse_features, parse_segments, run_meta, suppress_segments
from oodseg.meta.probabilities import open_probabilities, read_probabilities, write_probabilities
from oodseg.meta.segments import class_segments, interior_mask, threshold_segments
from oodseg.meta.targets import segment_iou

__all__ = ["SegmentFeatures", "class_segments", "classification_scores", "cross_val_predict", "cv_splits",
           "dispersion_maps", "feature_names", "interior_mask", "lars_ranking", "make_model", "metaood_feature_names",
           "open_probabilities", "parse_features", "parse_segments", "read_probabilities", "regression_score",
           "run_meta", "segment_features", "segment_iou", "segment_means", "suppress_segments", "threshold_segments",
           "write_probabilities"]
