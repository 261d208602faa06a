"""Dataset readers for the public OoD-segmentation layouts (SPEC §5), read as-is.

``open_dataset(kind, root, **options)`` finds the frames of one layout and returns a
:class:`Dataset`; ``dataset[i]`` reads one :class:`Sample` (image uint8 ``(H, W, 3)``,
label uint8 ``(H, W)`` or ``None``). OoD layouts yield labels 0 inlier / 1 anomaly /
255 void; ``cityscapes`` yields trainIds 0..18 / 255. ``detect_kind(root)`` guesses the
layout from the folder structure.

Options every kind accepts:

- ``name``: the dataset's name (default: derived from the root folder, plus the split).
- ``labels``: ``"auto"`` (default: labels required when any exist, none otherwise),
  ``"required"``, ``"available"`` (keep only labelled frames, e.g. the SMIYC
  validation frames) or ``"none"`` (images only, e.g. for scoring).

``smiyc-anomaly``, ``smiyc-obstacle`` and ``streethazards`` also take ``target``:
``"ood"`` (default, labels 0/1/255) or ``"semantic"`` (trainIds, 254 on anomalies, 255
void) for segmentation metrics with an outlier class (SPEC §4.4). Semantic SMIYC labels
are ``labels_masks/{fid}_labels_trainIds.png`` (written by SynthStreet; the public SMIYC
sets have none); StreetHazards reads its annotations with class+1 -> class, 14 -> 254.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from oodseg.data.imagefiles import IMAGE_SUFFIXES, read_image, read_raw_label
from oodseg.data.labels import (CITYSCAPES_LABELIDS, CITYSCAPES_TRAINIDS, LOSTANDFOUND,
                                LOSTANDFOUND_KNOWN_OBJECT_PREFIXES, OOD_LABELS, ROAD_ANOMALY_ORIGINAL,
                                STREETHAZARDS, STREETHAZARDS_SEMANTIC, TRAINIDS_WITH_OUTLIERS, LabelEncoding,
                                decode_label, encoding_from_mapping, parse_mapping)
from oodseg.errors import OodsegError
from oodseg.progress import track


@dataclass(frozen=True)
class Sample:
    """One frame: ``image`` uint8 ``(H, W, 3)`` RGB, ``label`` uint8 ``(H, W)`` or None."""

    fid: str
    image: np.ndarray
    label: np.ndarray | None
    image_path: Path


@dataclass(frozen=True)
class Frame:
    """Where one frame's files are. ``overlay_path``: an ``.npz`` whose ``rgb`` array is
    added to the image (Fishyscapes Static); ``label_path`` None when unlabelled."""

    fid: str
    image_path: Path
    label_path: Path | None
    encoding: LabelEncoding | None
    overlay_path: Path | None = None


class Dataset:
    """An ordered (by fid) list of frames of one layout; index by position or fid."""

    def __init__(self, kind: str, root: Path, name: str, frames: list[Frame]):
        self.kind, self.root, self.name = kind, root, name
        self._frames = sorted(frames, key=lambda f: f.fid)
        self._index = {f.fid: i for i, f in enumerate(self._frames)}
        if len(self._index) != len(self._frames):
            dup = next(f.fid for i, f in enumerate(self._frames) if self._index[f.fid] != i)
            raise OodsegError(f"{root}: two frames share the id {dup!r} in layout {kind}")

    @property
    def fids(self) -> list[str]:
        return [f.fid for f in self._frames]

    @property
    def frames(self) -> list[Frame]:
        return list(self._frames)

    @property
    def label_type(self) -> str | None:
        """``"ood"`` (0/1/255), ``"semantic"`` (trainIds) or None (no labels)."""
        enc = next((f.encoding for f in self._frames if f.label_path is not None), None)
        return None if enc is None else ("semantic" if enc.semantic else "ood")

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"Dataset(kind={self.kind!r}, name={self.name!r}, root={str(self.root)!r}, frames={len(self)})"

    def frame(self, key: int | str) -> Frame:
        """The file locations of one frame (by position or fid)."""
        if isinstance(key, str):
            if key not in self._index:
                raise OodsegError(f"{self.name}: no frame with id {key!r}")
            return self._frames[self._index[key]]
        return self._frames[key]

    def __getitem__(self, key: int | str) -> Sample:
        frame = self.frame(key)
        image = self.read_image(key)
        label = self.read_label(key)
        if label is not None and label.shape != image.shape[:2]:
            raise OodsegError(f"{frame.label_path}: label size {label.shape} differs from image size {image.shape[:2]}")
        return Sample(frame.fid, image, label, frame.image_path)

    def read_image(self, key: int | str) -> np.ndarray:
        """The frame's RGB image, uint8 ``(H, W, 3)``."""
        frame = self.frame(key)
        image = read_image(frame.image_path)
        if frame.overlay_path is not None:
            image = _apply_overlay(image, frame.overlay_path)
        return image

    def read_label(self, key: int | str) -> np.ndarray | None:
        """The frame's decoded label, uint8 ``(H, W)``, without reading the image; None if unlabelled."""
        frame = self.frame(key)
        if frame.label_path is None:
            return None
        return decode_label(read_raw_label(frame.label_path), frame.encoding, str(frame.label_path))


def _apply_overlay(image: np.ndarray, path: Path) -> np.ndarray:
    try:
        with np.load(path) as npz:
            overlay = np.asarray(npz["rgb"])
    except (OSError, KeyError, ValueError) as exc:
        raise OodsegError(f"{path}: unreadable overlay ({type(exc).__name__}); expected an .npz with array 'rgb'") from None
    if overlay.shape != image.shape:
        raise OodsegError(f"{path}: overlay shape {overlay.shape} differs from image shape {image.shape}")
    return np.clip(image.astype(np.int32) + overlay.astype(np.int32), 0, 255).astype(np.uint8)


# --- helpers shared by the layouts -------------------------------------------------------

def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise OodsegError(f"{path}: missing folder ({what})")
    return path


def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _fid_from_relative(rel: Path) -> str:
    """``a/b/c.png`` -> ``a_b_c``: a flat id (score files live in one folder)."""
    return "_".join(rel.with_suffix("").parts)


def _index_by_suffix(folder: Path, pattern: str, suffix: str) -> dict[str, Path]:
    """``{fid: path}`` for the images matching ``pattern`` under ``folder``, fid = stem minus ``suffix``."""
    return {p.stem[: -len(suffix)]: p for p in sorted(folder.glob(pattern))
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem.endswith(suffix)}


def _paired_folders(root: Path, image_dir: str, label_dir: str, label_name: Callable[[str], str],
                    encoding: LabelEncoding) -> list[Frame]:
    images = _image_files(_require_dir(root / image_dir, "images"))
    labels = root / label_dir
    return [Frame(p.stem, p, labels / label_name(p.stem), encoding) for p in images]


def _check_target(target: str) -> bool:
    """Whether ``target`` asks for semantic labels (``"semantic"``) rather than OoD labels (``"ood"``)."""
    if target not in ("ood", "semantic"):
        raise OodsegError(f"target: {target!r} is not one of ood, semantic")
    return target == "semantic"


def _is_preprocessed(root: Path) -> bool:
    return (root / "original").is_dir() and (root / "labels").is_dir()


# --- layouts ------------------------------------------------------------------------------
# Each returns (frames with the *expected* label paths, default name); labels are resolved after.

def _smiyc(root: Path, track_dir: str, target: str) -> tuple[list[Frame], str]:
    semantic = _check_target(target)
    base = root if (root / "images").is_dir() else root / track_dir
    images = _image_files(_require_dir(base / "images", f"SMIYC images; root must hold images/ or {track_dir}/"))
    masks = base / "labels_masks"
    suffix, encoding = ("_labels_trainIds", TRAINIDS_WITH_OUTLIERS) if semantic else ("_labels_semantic", OOD_LABELS)
    return [Frame(p.stem, p, masks / f"{p.stem}{suffix}.png", encoding) for p in images], base.name


def _smiyc_anomaly(root: Path, target: str = "ood") -> tuple[list[Frame], str]:
    """RoadAnomaly21: ``images/{fid}.jpg|png|webp``, ``labels_masks/{fid}_labels_semantic.png`` 0/1/255
    (``target="semantic"``: ``{fid}_labels_trainIds.png``)."""
    return _smiyc(root, "dataset_AnomalyTrack", target)


def _smiyc_obstacle(root: Path, target: str = "ood") -> tuple[list[Frame], str]:
    """RoadObstacle21: ``images/{fid}.webp``, ``labels_masks/{fid}_labels_semantic.png`` 0/1/255 (off-road 255)
    (``target="semantic"``: ``{fid}_labels_trainIds.png``, full scene labels)."""
    return _smiyc(root, "dataset_ObstacleTrack", target)


def _lostandfound(root: Path, split: str = "test") -> tuple[list[Frame], str]:
    """LostAndFound: ``leftImg8bit/{split}/{scene}/{fid}_leftImg8bit.png``, gtCoarse labelIds.

    ``split``: ``train``, ``test`` or ``testNoKnown`` = the test split without the
    children/bicycle sequences (:data:`LOSTANDFOUND_KNOWN_OBJECT_PREFIXES`) and without
    frames whose label has no annotated pixel, as in SegmentMeIfYouCan (1043 frames).
    """
    if split not in ("train", "test", "testNoKnown"):
        raise OodsegError(f"split: {split!r} is not a LostAndFound split (train, test, testNoKnown)")
    disk_split = "test" if split == "testNoKnown" else split
    image_dir = _require_dir(root / "leftImg8bit" / disk_split, "LostAndFound images")
    frames = [Frame(fid, p, root / "gtCoarse" / disk_split / p.parent.name / f"{fid}_gtCoarse_labelIds.png", LOSTANDFOUND)
              for fid, p in _index_by_suffix(image_dir, "*/*_leftImg8bit.*", "_leftImg8bit").items()]
    if split == "testNoKnown":
        frames = [f for f in frames if not f.fid.startswith(LOSTANDFOUND_KNOWN_OBJECT_PREFIXES)]
        frames = [f for f in track(frames, "LostAndFound: skipping unlabelled frames")
                  if not f.label_path.is_file() or np.count_nonzero(read_raw_label(f.label_path))]
    return frames, f"{root.name}-{split}"


def _fishyscapes_laf(root: Path, laf_root: str | Path | None = None) -> tuple[list[Frame], str]:
    """Fishyscapes LostAndFound: label files ``{fsid}_{lafid}_labels.png`` (official zip) or
    ``{lafid}_fishy-labels.png`` anywhere under ``root``, images from the LostAndFound tree
    ``laf_root`` (default ``root``); or a preprocessed copy ``original/`` + ``labels/``. 0/1/255."""
    if _is_preprocessed(root):
        return _paired_folders(root, "original", "labels", lambda s: f"{s}.png", OOD_LABELS), root.name
    laf = Path(laf_root) if laf_root is not None else root
    if not (laf / "leftImg8bit").is_dir():
        raise OodsegError(f"{laf}/leftImg8bit: missing folder; pass laf_root=<LostAndFound root with leftImg8bit/>")
    images = _index_by_suffix(laf / "leftImg8bit", "*/*/*_leftImg8bit.*", "_leftImg8bit")
    frames = []
    for label in sorted(root.rglob("*_labels.png")) + sorted(root.rglob("*_fishy-labels.png")):
        match = re.fullmatch(r"[0-9]+_(.+)_labels", label.stem) or re.fullmatch(r"(.+)_fishy-labels", label.stem)
        if match is None:
            continue
        lafid = match.group(1)
        if lafid not in images:
            raise OodsegError(f"{label}: no LostAndFound image {lafid}_leftImg8bit.* under {laf / 'leftImg8bit'}")
        frames.append(Frame(lafid, images[lafid], label, OOD_LABELS))
    return frames, root.name


def _fishyscapes_static(root: Path, cityscapes_root: str | Path | None = None) -> tuple[list[Frame], str]:
    """Fishyscapes Static: official ``{fsid}_{csid}_labels.png`` + ``{fsid}_{csid}_rgb.npz``
    overlays added to the Cityscapes image ``csid`` under ``cityscapes_root`` (default
    ``root``); or a preprocessed copy ``original/`` + ``labels/``. Labels 0/1/255."""
    if _is_preprocessed(root):
        return _paired_folders(root, "original", "labels", lambda s: f"{s}.png", OOD_LABELS), root.name
    cs = Path(cityscapes_root) if cityscapes_root is not None else root
    if not (cs / "leftImg8bit").is_dir():
        raise OodsegError(f"{cs}/leftImg8bit: missing folder; pass cityscapes_root=<Cityscapes root with leftImg8bit/>")
    images = _index_by_suffix(cs / "leftImg8bit", "*/*/*_leftImg8bit.*", "_leftImg8bit")
    frames = []
    for label in sorted(root.rglob("*_labels.png")):
        match = re.fullmatch(r"([0-9]+)_(.+)_labels", label.stem)
        if match is None:
            continue
        fsid, csid = match.groups()
        overlays = sorted(label.parent.glob(f"{fsid}_*rgb.npz"))
        if not overlays:
            raise OodsegError(f"{label}: missing overlay {fsid}_{csid}_rgb.npz next to it")
        if csid not in images:
            raise OodsegError(f"{label}: no Cityscapes image {csid}_leftImg8bit.* under {cs / 'leftImg8bit'}")
        frames.append(Frame(f"{fsid}_{csid}", images[csid], label, OOD_LABELS, overlays[0]))
    return frames, root.name


def _road_anomaly(root: Path) -> tuple[list[Frame], str]:
    """RoadAnomaly (Lis et al.): original ``frames/{name}.jpg`` with
    ``frames/{name}.labels/labels_semantic.png`` (anomaly = 2), or the preprocessed copy
    ``original/{name}.jpg`` + ``labels/{name}.png`` (0/1)."""
    if (root / "frames").is_dir():
        frames = [Frame(p.stem, p, p.parent / f"{p.stem}.labels" / "labels_semantic.png", ROAD_ANOMALY_ORIGINAL)
                  for p in _image_files(root / "frames")]
        return frames, root.name
    if _is_preprocessed(root):
        return _paired_folders(root, "original", "labels", lambda s: f"{s}.png", OOD_LABELS), root.name
    raise OodsegError(f"{root}: not a RoadAnomaly layout (expected frames/ or original/ + labels/)")


def _streethazards(root: Path, split: str = "test", target: str = "ood") -> tuple[list[Frame], str]:
    """StreetHazards: ``{split}/images/**.png`` + ``{split}/annotations/**.png`` (class+1; anomaly 14).

    ``target="semantic"``: the 13 classes 0..12, the anomaly as 254."""
    encoding = STREETHAZARDS_SEMANTIC if _check_target(target) else STREETHAZARDS
    base = root / split if (root / split / "images").is_dir() else root
    images = _require_dir(base / "images", f"StreetHazards images; root must hold {split}/images/ or images/")
    annotations = base / "annotations"
    frames = [Frame(_fid_from_relative(p.relative_to(images)), p, annotations / p.relative_to(images).with_suffix(".png"),
                    encoding) for p in _image_files(images, recursive=True)]
    return frames, f"{root.name}-{split}"


def _cityscapes(root: Path, split: str = "val", city: str | None = None) -> tuple[list[Frame], str]:
    """Cityscapes: ``leftImg8bit/{split}/{city}/{fid}_leftImg8bit.png`` with
    ``gtFine/.../{fid}_gtFine_labelTrainIds.png``, or ``_labelIds.png`` mapped to trainIds.

    ``city``: only these city folders (comma-separated, e.g. ``fog`` of SynthStreet's
    ``shifted`` set); the name gets ``-{city}`` appended."""
    image_dir = _require_dir(root / "leftImg8bit" / split, f"Cityscapes images of split {split!r}")
    cities = None if city is None else [c for c in str(city).replace(" ", "").split(",") if c]
    for name in cities or []:
        _require_dir(image_dir / name, f"city {name!r} of split {split!r}")
    frames = []
    for fid, p in _index_by_suffix(image_dir, "*/*_leftImg8bit.*", "_leftImg8bit").items():
        if cities is not None and p.parent.name not in cities:
            continue
        gt = root / "gtFine" / split / p.parent.name
        train_ids, label_ids = gt / f"{fid}_gtFine_labelTrainIds.png", gt / f"{fid}_gtFine_labelIds.png"
        if not train_ids.is_file() and label_ids.is_file():
            frames.append(Frame(fid, p, label_ids, CITYSCAPES_LABELIDS))
        else:
            frames.append(Frame(fid, p, train_ids, CITYSCAPES_TRAINIDS))
    return frames, f"{root.name}-{split}" + (f"-{'-'.join(cities)}" if cities else "")


def _folder(root: Path, images: str = "images", masks: str = "masks", mapping: str | dict = "0:0,1:1,255:255",
            mask_suffix: str = "") -> tuple[list[Frame], str]:
    """Any images folder + masks folder (``{masks}/{rel stem}{mask_suffix}.png``) and a
    ``mapping`` of mask value -> label (``"0:0,1:1,255:255"`` or a dict); OoD labels when
    every target is 0/1/255, else semantic."""
    table = parse_mapping(mapping)
    encoding = encoding_from_mapping("folder mapping", table, semantic=not set(table.values()) <= {0, 1, 255})
    image_dir = _require_dir(root / images, "images")
    frames = [Frame(_fid_from_relative(p.relative_to(image_dir)), p,
                    (root / masks / p.relative_to(image_dir)).with_name(f"{p.stem}{mask_suffix}.png"), encoding)
              for p in _image_files(image_dir, recursive=True)]
    return frames, root.name


def _images(root: Path) -> tuple[list[Frame], str]:
    """Any folder of images (searched recursively), no labels."""
    _require_dir(root, "images")
    return [Frame(_fid_from_relative(p.relative_to(root)), p, None, None) for p in _image_files(root, recursive=True)], root.name


_LAYOUTS: dict[str, Callable[..., tuple[list[Frame], str]]] = {
    "smiyc-anomaly": _smiyc_anomaly,
    "smiyc-obstacle": _smiyc_obstacle,
    "lostandfound": _lostandfound,
    "fishyscapes-laf": _fishyscapes_laf,
    "fishyscapes-static": _fishyscapes_static,
    "road-anomaly": _road_anomaly,
    "streethazards": _streethazards,
    "cityscapes": _cityscapes,
    "folder": _folder,
    "images": _images,
}


def available_kinds() -> list[str]:
    """The layout names :func:`open_dataset` accepts."""
    return list(_LAYOUTS)


def kind_options(kind: str) -> list[str]:
    """The layout-specific options of ``kind`` (besides ``name`` and ``labels``)."""
    return list(inspect.signature(_layout(kind)).parameters)[1:]


def _layout(kind: str) -> Callable[..., tuple[list[Frame], str]]:
    if kind not in _LAYOUTS:
        raise OodsegError(f"dataset kind: unknown {kind!r} (known: {', '.join(_LAYOUTS)})")
    return _LAYOUTS[kind]


def _resolve_labels(frames: list[Frame], labels: str, kind: str) -> list[Frame]:
    if labels not in ("auto", "required", "available", "none"):
        raise OodsegError(f"labels: {labels!r} is not one of auto, required, available, none")
    if kind == "images" or labels == "none":
        return [replace(f, label_path=None) for f in frames]
    present = [f.label_path is not None and f.label_path.is_file() for f in frames]
    if labels == "available":
        return [f for f, ok in zip(frames, present) if ok]
    if labels == "auto" and not any(present):
        return [replace(f, label_path=None) for f in frames]
    missing = next((f for f, ok in zip(frames, present) if not ok), None)
    if missing is not None:
        raise OodsegError(f"{missing.label_path}: missing label for image {missing.image_path}")
    return frames


def open_dataset(kind: str, root: str | Path, *, name: str | None = None, labels: str = "auto", **options) -> Dataset:
    """Open the dataset of layout ``kind`` at ``root`` (see :func:`available_kinds`).

    Layout options (e.g. ``split="testNoKnown"`` for ``lostandfound``, ``mapping=`` for
    ``folder``) are passed as keywords; unknown options and empty datasets raise OodsegError.
    """
    layout = _layout(kind)
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise OodsegError(f"{root}: dataset root is not a folder")
    allowed = kind_options(kind)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise OodsegError(f"dataset option {unknown[0]!r} is not known for kind {kind} "
                          f"(known: {', '.join(['name', 'labels'] + allowed)})")
    frames, default_name = layout(root, **options)
    frames = _resolve_labels(frames, labels, kind)
    if not frames:
        raise OodsegError(f"{root}: no frames found for dataset kind {kind} (labels={labels})")
    return Dataset(kind, root, name or default_name, frames)


def detect_kind(root: str | Path) -> str:
    """Guess the layout of ``root`` from its folder structure.

    SMIYC folders whose images are all ``.webp`` are taken for the obstacle track. The
    preprocessed ``original/`` + ``labels/`` layout is reported as ``road-anomaly``;
    Fishyscapes copies in that layout need an explicit kind.
    """
    root = Path(root)
    if not root.is_dir():
        raise OodsegError(f"{root}: dataset root is not a folder")
    has = lambda *names: all((root / n).is_dir() for n in names)  # noqa: E731
    if has("dataset_AnomalyTrack"):
        return "smiyc-anomaly"
    if has("dataset_ObstacleTrack"):
        return "smiyc-obstacle"
    if has("images", "labels_masks"):
        suffixes = {p.suffix.lower() for p in _image_files(root / "images")}
        return "smiyc-obstacle" if suffixes == {".webp"} else "smiyc-anomaly"
    if has("leftImg8bit", "gtCoarse"):
        return "lostandfound"
    if has("leftImg8bit", "gtFine"):
        return "cityscapes"
    if has("frames"):
        return "road-anomaly"
    if has("test/images", "test/annotations") or has("images", "annotations"):
        return "streethazards"
    if any(root.rglob("*_fishy-labels.png")):
        return "fishyscapes-laf"
    if any(re.fullmatch(r"[0-9]+_.+_labels\.png", p.name) for p in root.rglob("*_labels.png")):
        return "fishyscapes-static" if any(root.rglob("*rgb.npz")) else "fishyscapes-laf"
    if _is_preprocessed(root):
        return "road-anomaly"
    if has("images", "masks"):
        return "folder"
    if _image_files(root, recursive=True):
        return "images"
    raise OodsegError(f"{root}: cannot tell the dataset layout; pass the kind ({', '.join(_LAYOUTS)})")
