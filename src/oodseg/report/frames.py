"""Example-frame panels: image | ground truth | predicted segmentation | anomaly heatmap per method.

Follows each evaluate JSON's ``root``/``dataset_kind``/``scores``: images and decoded labels
come from ``oodseg.data.open_dataset(kind, root)``, score maps from
``oodseg.data.read_score(find_score(scores, fid))``, the predicted trainIds and their checkpoint
from the manifest of the method's maps (:func:`oodseg.provenance.manifest_of`; optional: written by
``oodseg score``), so the prediction shown is that of the checkpoint that wrote the maps.
A method's heatmaps share one colour scale over every frame shown (1st–99th percentile
of its pooled scores), drawn with the same colour map, so frames compare by colour.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from oodseg.data import find_score, open_dataset, read_score
from oodseg.data.imagefiles import read_raw_label
from oodseg.errors import OodsegError
from oodseg.provenance import manifest_of, prediction_file
from oodseg.progress import track
from oodseg.report.loading import Evaluation

THUMB_WIDTH = 256
HEATMAP_CMAP = "inferno"
SCALE_PERCENTILES = (1.0, 99.0)

#: Cityscapes trainId colours (0..18); other values (ignore 255, pasted 254) are black.
CITYSCAPES_PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)], dtype=np.uint8)
#: OoD label colours: 0 inlier (grey-blue), 1 anomaly (orange), 255 void (black).
OOD_COLOURS = {0: (96, 112, 140), 1: (255, 140, 0), 255: (0, 0, 0)}


@dataclass(frozen=True)
class FrameRow:
    """One frame: report-relative paths of its panels (None where a panel is unavailable)."""

    fid: str
    image: str
    ground_truth: str | None
    prediction: str | None
    heatmaps: tuple[str, ...]


@dataclass(frozen=True)
class FrameGrid:
    """The example frames of one dataset; ``methods[i]`` is the method of ``heatmaps[i]`` in every row."""

    dataset: str
    methods: tuple[str, ...]
    rows: tuple[FrameRow, ...]
    checkpoint: str | None
    semantic: bool


def palette_image(values: np.ndarray, semantic: bool) -> np.ndarray:
    """Colour a label map ``(H, W)`` uint8 → RGB ``(H, W, 3)``: Cityscapes palette or OoD colours."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    if semantic:
        lut[:len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
    else:
        for value, colour in OOD_COLOURS.items():
            lut[value] = colour
    return lut[values]


def colourize(score: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map a float score map ``(H, W)`` through HEATMAP_CMAP on [vmin, vmax] → RGB uint8 ``(H, W, 3)``."""
    lut = (colormaps[HEATMAP_CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)
    span = max(vmax - vmin, np.finfo(np.float32).eps)
    index = np.clip((score - vmin) / span * 255.0, 0, 255).round().astype(np.uint8)
    return lut[index]


def colourbar_strip(width: int = 256, height: int = 10) -> np.ndarray:
    """The heatmap colour map as a horizontal RGB strip ``(height, width, 3)`` (low → high)."""
    ramp = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    return colourize(ramp, 0.0, 1.0)


def render_frames(groups: dict[str, list[Evaluation]], n_frames: int, out_dir: Path,
                  report_dir: Path) -> tuple[list[FrameGrid], dict[str, tuple[float, float]]]:
    """Write the panels of ``n_frames`` evenly spaced frames per dataset under ``out_dir``.

    Returns one FrameGrid per dataset and the colour scale ``(vmin, vmax)`` per method
    label. Raises OodsegError (with a hint to use ``--frames 0``) when a dataset root,
    score file or prediction is missing or malformed.
    """
    plans = []
    semantic = {}
    for dataset, evaluations in groups.items():
        kind, root = _dataset_source(dataset, evaluations)
        try:
            data = open_dataset(kind, root)
        except OodsegError as exc:
            raise OodsegError(f"{exc} (dataset {dataset!r}; use --frames 0 to skip example frames)") from None
        semantic[dataset] = data.label_type == "semantic"
        picks = sorted(set(np.linspace(0, len(data) - 1, min(n_frames, len(data))).round().astype(int).tolist()))
        plans.extend((dataset, data, index) for index in picks)

    pending: dict[str, list[tuple[str, int, str, np.ndarray]]] = {}  # method → (dataset, row, path, score)
    rows: dict[str, list[dict]] = {dataset: [] for dataset in groups}
    checkpoints: dict[str, str | None] = {}
    for dataset, data, index in track(plans, "report: example frames"):
        sample = data[index]
        folder = out_dir / slug(dataset)
        folder.mkdir(parents=True, exist_ok=True)
        stem = slug(sample.fid)
        size = _thumb_size(sample.image.shape[:2])
        row = {"fid": sample.fid, "heatmaps": []}
        row["image"] = _save(Image.fromarray(sample.image).resize(size, Image.BILINEAR),
                             folder / f"{stem}__image.png", report_dir)
        row["ground_truth"] = None
        if sample.label is not None:
            row["ground_truth"] = _save(Image.fromarray(palette_image(sample.label, semantic[dataset]))
                                        .resize(size, Image.NEAREST), folder / f"{stem}__gt.png", report_dir)
        row["prediction"] = None
        for ev in groups[dataset]:
            manifest = manifest_of(Path(ev.data["scores"]))
            prediction = prediction_file(manifest, sample.fid) if manifest is not None else None
            if prediction is not None and prediction.is_file():
                labels = read_raw_label(prediction)
                if labels.shape != sample.image.shape[:2]:
                    raise OodsegError(f"{prediction}: prediction is {labels.shape}, image is {sample.image.shape[:2]}")
                if labels.max() > 255:
                    raise OodsegError(f"{prediction}: prediction has values above 255 (expected trainIds)")
                row["prediction"] = _save(Image.fromarray(palette_image(labels.astype(np.uint8), True))
                                          .resize(size, Image.NEAREST), folder / f"{stem}__prediction.png",
                                          report_dir)
                checkpoints.setdefault(dataset, manifest.get("checkpoint"))
                break
        for m, ev in enumerate(groups[dataset]):
            score = _read_frame_score(Path(ev.data["scores"]), sample.fid)
            thumb = np.asarray(Image.fromarray(score).resize(size, Image.BILINEAR), dtype=np.float32)
            path = folder / f"{stem}__m{m:02d}.png"
            row["heatmaps"].append(path.relative_to(report_dir).as_posix())
            pending.setdefault(ev.label, []).append((dataset, len(rows[dataset]), path, thumb))
        rows[dataset].append(row)

    scales = {}
    for label, items in pending.items():
        pooled = np.concatenate([thumb.ravel() for *_, thumb in items])
        vmin, vmax = (float(v) for v in np.percentile(pooled, SCALE_PERCENTILES))
        scales[label] = (vmin, vmax)
        for _, _, path, thumb in items:
            Image.fromarray(colourize(thumb, vmin, vmax)).save(path, optimize=False)

    grids = [FrameGrid(dataset, tuple(ev.label for ev in groups[dataset]),
                       tuple(FrameRow(r["fid"], r["image"], r["ground_truth"], r["prediction"], tuple(r["heatmaps"]))
                             for r in rows[dataset]), checkpoints.get(dataset), semantic[dataset])
             for dataset in groups]
    return grids, scales


def _dataset_source(dataset: str, evaluations: list[Evaluation]) -> tuple[str, str]:
    """The (dataset_kind, root) all evaluations of ``dataset`` agree on."""
    sources = set()
    for ev in evaluations:
        for key in ("dataset_kind", "root", "scores"):
            if not isinstance(ev.data.get(key), str):
                raise OodsegError(f"{ev.path}: field {key!r} is needed for example frames "
                                  f"(use --frames 0 to skip them)")
        sources.add((ev.data["dataset_kind"], ev.data["root"]))
    if len(sources) > 1:
        raise OodsegError(f"dataset {dataset!r}: evaluations disagree on dataset_kind/root "
                          f"{sorted(sources)}; give them distinct dataset names")
    return sources.pop()


def _read_frame_score(score_dir: Path, fid: str) -> np.ndarray:
    """The score map ``(H, W)`` float32 of frame ``fid`` (read_score checks shape and finiteness)."""
    try:
        return read_score(find_score(score_dir, fid))
    except OodsegError as exc:
        raise OodsegError(f"{exc} (use --frames 0 to skip example frames)") from None


def _thumb_size(shape: tuple[int, int]) -> tuple[int, int]:
    height, width = shape
    return THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width))


def slug(name: str) -> str:
    """``name`` made safe as a file name (characters outside [A-Za-z0-9._-] become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _save(image: Image.Image, path: Path, report_dir: Path) -> str:
    image.save(path)
    return path.relative_to(report_dir).as_posix()
