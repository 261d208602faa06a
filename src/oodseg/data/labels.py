"""Label encodings: how the raw values of a dataset's label PNGs map to oodseg labels.

Every layout stores labels its own way (LostAndFound labelIds, Cityscapes labelIds,
StreetHazards class+1, ...). A :class:`LabelEncoding` is a 256-entry lookup table from
raw value to oodseg value (OoD: 0 inlier, 1 anomaly, 255 void; semantic: trainIds
0..18, 255 ignore); raw values the layout never uses are marked invalid and decoding
them raises :class:`~oodseg.errors.OodsegError` naming the file and the value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from oodseg.errors import OodsegError

INVALID = -1

#: Cityscapes labelId -> trainId (official ``cityscapesScripts`` table; 255 = ignore).
CITYSCAPES_ID_TO_TRAINID: dict[int, int] = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255,
    10: 255, 11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6,
    20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255,
    30: 255, 31: 16, 32: 17, 33: 18,
}

#: The LostAndFound sequences whose objects are Cityscapes classes (children, bicycles):
#: ``testNoKnown`` drops every frame whose id starts with one of these prefixes
#: (the SegmentMeIfYouCan benchmark's ``LostAndFound-testNoKnown`` definition).
LOSTANDFOUND_KNOWN_OBJECT_PREFIXES: tuple[str, ...] = (
    "15_Rechbergstr_Deckenpfronn",      # children
    "01_Hanns_Klemm_Str_45_000006",     # bicycle
    "01_Hanns_Klemm_Str_45_000007",     # bicycle
    "10_Schlossberg_9_000004",          # bicycle
)


@dataclass(frozen=True)
class LabelEncoding:
    """A raw-value -> oodseg-value table.

    ``table``: int16 ``(256,)``, ``INVALID`` (-1) for raw values outside the encoding.
    ``semantic``: whether decoded labels are trainIds (else OoD labels 0/1/255).
    """

    name: str
    table: np.ndarray = field(repr=False)
    semantic: bool = False

    def valid_values(self) -> str:
        """The accepted raw values, compressed into ranges (for error messages)."""
        values = np.flatnonzero(self.table != INVALID)
        parts, start = [], None
        for i, v in enumerate(values):
            if start is None:
                start = v
            if i + 1 == len(values) or values[i + 1] != v + 1:
                parts.append(str(start) if start == v else f"{start}-{v}")
                start = None
        return ", ".join(parts)


def encoding_from_mapping(name: str, mapping: Mapping[int, int], semantic: bool = False) -> LabelEncoding:
    """Build an encoding from ``{raw value: label value}``; unlisted raw values are invalid."""
    table = np.full(256, INVALID, dtype=np.int16)
    for raw, value in mapping.items():
        raw, value = int(raw), int(value)
        if not 0 <= raw <= 255 or not 0 <= value <= 255:
            raise OodsegError(f"label mapping {name}: {raw}->{value} is outside 0..255")
        table[raw] = value
    return LabelEncoding(name, table, semantic)


def parse_mapping(text: str | Mapping[int, int]) -> dict[int, int]:
    """Parse ``"0:0,1:1,2-200:1,255:255"`` (value or ``lo-hi`` range ``:`` label) into a dict."""
    if isinstance(text, Mapping):
        return {int(k): int(v) for k, v in text.items()}
    mapping: dict[int, int] = {}
    for item in str(text).replace(" ", "").split(","):
        if not item:
            continue
        try:
            raw, value = item.split(":")
            lo, _, hi = raw.partition("-")
            for r in range(int(lo), int(hi or lo) + 1):
                mapping[r] = int(value)
        except ValueError:
            raise OodsegError(f"mapping: cannot parse {item!r}; expected VALUE:CLASS or LO-HI:CLASS, e.g. 0:0,1:1,255:255") from None
    if not mapping:
        raise OodsegError("mapping: empty; expected VALUE:CLASS pairs, e.g. 0:0,1:1,255:255")
    return mapping


def decode_label(raw: np.ndarray, encoding: LabelEncoding, source: str = "label") -> np.ndarray:
    """Map a raw label ``(H, W)`` (any integer dtype) to uint8 ``(H, W)`` through ``encoding``.

    Raises OodsegError naming ``source`` and the first value outside the encoding.
    """
    if raw.ndim != 2:
        raise OodsegError(f"{source}: label must be a single-channel image, got shape {raw.shape}")
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            bad = int(raw.min()) if raw.min() < 0 else int(raw.max())
            raise OodsegError(f"{source}: label value {bad} is not in the {encoding.name} encoding "
                              f"(valid: {encoding.valid_values()})")
        raw = raw.astype(np.uint8)
    decoded = encoding.table[raw]
    if (decoded == INVALID).any():
        bad = int(raw[decoded == INVALID][0])
        raise OodsegError(f"{source}: label value {bad} is not in the {encoding.name} encoding "
                          f"(valid: {encoding.valid_values()})")
    return decoded.astype(np.uint8)


def _table(name: str, pairs: dict[int, int], semantic: bool = False) -> LabelEncoding:
    return encoding_from_mapping(name, pairs, semantic)


#: SMIYC / Fishyscapes / oodseg OoD labels: 0 inlier, 1 anomaly, 255 void.
OOD_LABELS = _table("0/1/255", {0: 0, 1: 1, 255: 255})
#: LostAndFound gtCoarse labelIds: 1 (free space) -> 0, 2..200 (objects) -> 1, all else void.
LOSTANDFOUND = _table("LostAndFound labelIds", {v: (0 if v == 1 else 1 if 2 <= v <= 200 else 255) for v in range(256)})
#: RoadAnomaly (Lis et al.) original ``labels_semantic.png``: 0 normal, 2 anomaly (255 void).
ROAD_ANOMALY_ORIGINAL = _table("RoadAnomaly labels_semantic", {0: 0, 2: 1, 255: 255})
#: StreetHazards annotations store class+1 (1..14); after -1, class 13 is the anomaly and
#: classes 0..12 are inliers (the original protocol counts "unlabeled" as inlier);
#: raw 0 becomes -1 = 255 in uint8 arithmetic, i.e. void.
STREETHAZARDS = _table("StreetHazards", {0: 255, **{v: 0 for v in range(1, 14)}, 14: 1})
#: Cityscapes ``*_labelTrainIds.png``: 0..18, 255 ignore.
CITYSCAPES_TRAINIDS = _table("Cityscapes trainIds", {**{v: v for v in range(19)}, 255: 255}, semantic=True)
#: Cityscapes ``*_labelIds.png`` (0..33) mapped to trainIds.
CITYSCAPES_LABELIDS = _table("Cityscapes labelIds", CITYSCAPES_ID_TO_TRAINID, semantic=True)
#: Semantic labels with an outlier class (SynthStreet ``{fid}_labels_trainIds.png``): trainIds 0..18,
#: 254 anomaly/obstacle pixels, 255 void.
TRAINIDS_WITH_OUTLIERS = _table("trainIds with outliers", {**{v: v for v in range(19)}, 254: 254, 255: 255},
                                semantic=True)
#: StreetHazards annotations as semantic labels: class+1 -> class 0..12, the anomaly (14) -> 254,
#: raw 0 -> 255 (void).
STREETHAZARDS_SEMANTIC = _table("StreetHazards semantic", {0: 255, **{v: v - 1 for v in range(1, 14)}, 14: 254},
                                semantic=True)


def class_frequencies(dataset, num_classes: int) -> np.ndarray:
    """(num_classes,) float64 share of each trainId ``0..num_classes-1`` among the labelled pixels of
    ``dataset`` (an :class:`oodseg.data.Dataset` with semantic labels; other values such as 255 are
    not counted). Reads only the label files, with a progress bar."""
    from oodseg.progress import track

    counts = np.zeros(num_classes, dtype=np.int64)
    for index in track(range(len(dataset)), "count label pixels"):
        label = dataset.read_label(index)
        if label is None:
            raise OodsegError(f"{dataset.frame(index).image_path}: no label file (class frequencies need labels)")
        counts += np.bincount(label.ravel(), minlength=256)[:num_classes]
    if counts.sum() == 0:
        raise OodsegError(f"{dataset.name}: no pixel is labelled with a trainId below {num_classes}")
    return counts / counts.sum()
