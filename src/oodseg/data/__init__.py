"""Datasets (the public layouts of SPEC §5, read as-is), label encodings and score files."""
from oodseg.data.io import find_score, read_score, write_score
from oodseg.data.labels import LabelEncoding, decode_label, encoding_from_mapping, parse_mapping
from oodseg.data.readers import Dataset, Sample, available_kinds, detect_kind, kind_options, open_dataset
from oodseg.layout import score_path

__all__ = [
    "Dataset", "Sample", "open_dataset", "detect_kind", "available_kinds", "kind_options",
    "LabelEncoding", "decode_label", "encoding_from_mapping", "parse_mapping",
    "score_path", "write_score", "read_score", "find_score",
]
