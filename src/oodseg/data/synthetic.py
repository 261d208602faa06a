"""SynthStreet: the embedded procedural benchmark (no download, minutes on a laptop CPU).

``generate(out)`` writes, deterministically (same seed → byte-identical files):

* ``cityscapes/``  train/val street scenes in Cityscapes layout (19 trainIds + 255 void);
* ``anomaly/``     SMIYC anomaly track: large unknown objects anywhere (labels 0/1/255);
* ``obstacle/``    SMIYC obstacle track: small objects on the road, off-road void;
                   both tracks also hold semantic labels ``labels_masks/{fid}_labels_trainIds.png``
                   (the full scene's trainIds, 254 on the anomalies/obstacles, 255 void) for
                   segmentation metrics with an outlier class (open-mIoU);
* ``anomaly_val/``, ``obstacle_val/`` the same two tracks for validation (threshold and recipe
                   choices): their own scene streams and held-out objects (``VAL_SOURCES``), so they
                   share no object and no scene with the test tracks;
* ``shifted/``     in-distribution scenes under night, fog, blur and noise (Cityscapes layout);
* ``outliers/``    an object pool for OoD training whose sources are disjoint from every
                   test anomaly (``images/{id}.png`` RGB, ``masks/{id}.png`` 0/1);
* ``synthstreet.json`` the manifest (seed, size, counts, classes, sources), written last.

Every frame has its own random stream derived from ``(seed, split, index)``, so frames do
not depend on generation order, and a split added later (``anomaly_val``, ``obstacle_val``)
leaves every earlier file byte-identical; ``generate`` adds such splits to an existing folder. ``render_scene``/``render_frame`` draw one frame in memory.
"""
from __future__ import annotations

import json
import os
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from oodseg.atomic import publish_mode, staging_directory, write_json
from oodseg.classes import CITYSCAPES_CLASSES
from oodseg.data.synth.canvas import ANOMALY, VOID, Canvas, Sprite
from oodseg.data.synth.conditions import CONDITIONS, apply_condition
from oodseg.data.synth.objects import OUTLIER_SOURCES, TEST_SOURCES, VAL_SOURCES, make_sprite
from oodseg.data.synth.scene import ROAD, TRACKS, Item, Layout, draw_scene, sample_layout, sky_paint, street_items
from oodseg.errors import OodsegError
from oodseg.progress import track as progress_track

DEFAULT_SIZE: tuple[int, int] = (256, 512)
#: Frames per split; ``shifted`` is per condition (4 conditions), ``outliers`` counts objects.
DEFAULT_FRAMES: dict[str, int] = {"train": 300, "val": 50, "anomaly": 40, "obstacle": 40, "shifted": 10, "outliers": 60,
                                  "anomaly_val": 20, "obstacle_val": 20}
#: OoD validation tracks → the test track whose layout and scene statistics they share.
VAL_TRACKS: dict[str, str] = {"anomaly_val": "anomaly", "obstacle_val": "obstacle"}
MANIFEST_NAME = "synthstreet.json"
#: Semantic labels of the anomaly/obstacle tracks, read by ``open_dataset(kind, root, target="semantic")``.
SEMANTIC_LABELS = "labels_masks/{fid}_labels_trainIds.png"
GENERATOR_VERSION = 3  # 2: semantic track labels {fid}_labels_trainIds.png; 3: anomaly_val/obstacle_val tracks
MAX_FRAMES = 100_000
_STREAMS = {"train": 1, "val": 2, "anomaly": 3, "obstacle": 4, "shifted": 5, "outliers": 6, "anomaly_val": 7,
            "obstacle_val": 8}
_CITY = "synth"


@dataclass(frozen=True)
class SynthFrame:
    """One rendered frame.

    ``image`` uint8 ``(H, W, 3)``; ``train_ids`` uint8 ``(H, W)`` (0..18, 255 void, 254 on
    pasted objects); ``paste_mask`` bool ``(H, W)`` the visible pasted-object pixels;
    ``ood_label`` uint8 ``(H, W)`` SMIYC labels for the frame's track (0/1/255; for the
    ``id`` track 0 everywhere except void); ``sources`` the pasted objects' source names.
    """

    image: np.ndarray
    train_ids: np.ndarray
    paste_mask: np.ndarray
    ood_label: np.ndarray
    sources: tuple[str, ...]


def _streams(seed) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent (scene, paste, look) generators from an int / int sequence / Generator."""
    if isinstance(seed, np.random.Generator):
        seed = [int(s) for s in seed.integers(0, 2 ** 63, size=2)]
    sequence = np.random.SeedSequence(seed)
    return tuple(np.random.default_rng(s) for s in sequence.spawn(3))  # type: ignore[return-value]


def check_size(size: Sequence[int]) -> tuple[int, int]:
    """Validate an image size ``(H, W)``: integers in 64..4096, multiples of 8."""
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise OodsegError(f"size {size!r}: expected two integers H, W") from None
    for name, v in (("height", h), ("width", w)):
        if not 64 <= v <= 4096 or v % 8:
            raise OodsegError(f"size {h}x{w}: {name} must be a multiple of 8 between 64 and 4096")
    return h, w


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"256x512"`` (H×W) into a checked ``(H, W)``."""
    parts = str(text).lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise OodsegError(f"size {text!r}: expected HxW, e.g. 256x512")
    return check_size((int(parts[0]), int(parts[1])))


def parse_frames(text: str | Mapping[str, int] | None) -> dict[str, int]:
    """Frame counts from ``"train=300,val=50"`` or a dict; unspecified splits keep their defaults."""
    counts = dict(DEFAULT_FRAMES)
    if text is None:
        return counts
    items = text.items() if isinstance(text, Mapping) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(text).replace(" ", "").split(",") if part)
    for key, value in items:
        if key not in counts:
            raise OodsegError(f"frames: unknown split {key!r} (known: {', '.join(DEFAULT_FRAMES)})")
        try:
            n = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise OodsegError(f"frames: {key}={value!r} is not an integer") from None
        if not 0 <= n <= MAX_FRAMES:
            raise OodsegError(f"frames: {key}={n} must be between 0 and {MAX_FRAMES}")
        counts[key] = n
    return counts


# ----------------------------------------------------------------------------- rendering


def _anomaly_items(layout: Layout, rng: np.random.Generator, sources: Sequence[str]) -> tuple[list[Item], list[str]]:
    """1-3 large objects on the road, the sidewalks or in front of the buildings, scaled by depth."""
    cam = layout.camera
    items, names = [], []
    for _ in range(int(rng.integers(1, 4))):
        source = str(sources[int(rng.integers(len(sources)))])
        place = int(rng.integers(3))
        if place == 0:
            x = rng.uniform(layout.road[0] + 0.5, layout.road[1] - 0.5)
        else:
            side = int(rng.integers(2))
            inner, outer = (layout.road[side], layout.sidewalk[side]) if place == 1 else (layout.sidewalk[side], layout.facade[side])
            x = rng.uniform(min(inner, outer), max(inner, outer)) if place == 1 else outer - np.sign(outer) * rng.uniform(0.3, 1.0)
        z_min = abs(x) * cam.focal / (0.42 * cam.width) + 2.0  # keep the object's centre in view
        z = rng.uniform(max(5.0, z_min), max(30.0, z_min + 10.0))
        height = min(rng.uniform(1.2, 3.5) * cam.scale(z), 0.7 * cam.height)
        sprite = make_sprite(source, max(height, 0.15 * cam.height), rng)
        u, v = cam.project(x, 0.0, z)
        left, top = int(round(u - sprite.mask.shape[1] / 2)), int(round(v - sprite.mask.shape[0]))
        items.append(Item(z, lambda canvas, s=sprite, a=left, b=top, d=z: canvas.sprite(s, a, b, d)))
        names.append(source)
    return items, names


def _place_obstacles(canvas: Canvas, layout: Layout, rng: np.random.Generator, sources: Sequence[str]) -> list[str]:
    """1-3 small objects standing on the road, each placed only where all its pixels show road."""
    cam = layout.camera
    names = []
    for _ in range(int(rng.integers(1, 4))):
        source = str(sources[int(rng.integers(len(sources)))])
        labels = canvas.labels()
        for _attempt in range(25):
            z = rng.uniform(6.0, 35.0)
            x = rng.uniform(layout.road[0] + 0.4, layout.road[1] - 0.4)
            sprite = make_sprite(source, max(rng.uniform(0.25, 0.8) * cam.scale(z), 0.035 * cam.height), rng)
            u, v = cam.project(x, 0.0, z)
            h, w = sprite.mask.shape
            left, top = int(round(u - w / 2)), int(round(v - h + 0.15 * h))
            if left < 0 or top < 0 or left + w > cam.width or top + h > cam.height:
                continue
            if np.all(labels[top:top + h, left:left + w][sprite.mask] == ROAD):
                canvas.sprite(sprite, left, top, z)
                names.append(source)
                break
    return names


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global exposure, colour cast and sensor noise; float 0..255 → uint8."""
    gain = (rng.uniform(0.8, 1.15) * rng.uniform(0.94, 1.06, size=3)).astype(np.float32)
    noise = rng.standard_normal(image.shape[:2], dtype=np.float32)
    noise *= np.float32(rng.uniform(1.5, 4.0))
    out = image * gain
    out += noise[..., None] + 0.5
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def render_frame(seed, size: Sequence[int] = DEFAULT_SIZE, track: str = "id", paste: bool = True,
                 condition: str | None = None, sources: Sequence[str] = TEST_SOURCES) -> SynthFrame:
    """Render one frame for ``track`` in ``("id", "anomaly", "obstacle")``.

    ``seed``: int, int sequence or ``numpy.random.Generator``. ``paste=False`` renders the
    identical scene without the anomalies/obstacles (for checking the paste masks);
    ``condition``: one of ``CONDITIONS`` to corrupt the image (labels unchanged).
    """
    if track not in TRACKS:
        raise OodsegError(f"track {track!r}: expected one of {', '.join(TRACKS)}")
    if condition is not None and condition not in CONDITIONS:
        raise OodsegError(f"condition {condition!r}: expected one of {', '.join(CONDITIONS)}")
    size = check_size(size)
    scene_rng, paste_rng, look_rng = _streams(seed)
    layout = sample_layout(scene_rng, size, track)
    items = street_items(layout, scene_rng)
    sky = sky_paint(scene_rng)
    draw_seed = int(scene_rng.integers(2 ** 63))
    names: list[str] = []
    for _attempt in range(4):  # anomaly track: redraw the anomalies if nearer things hid them
        extra, names = _anomaly_items(layout, paste_rng, sources) if (paste and track == "anomaly") else ([], [])
        canvas = Canvas(layout.camera, sky)
        draw_scene(canvas, layout, items + extra, np.random.default_rng(draw_seed))
        if not extra or np.count_nonzero(canvas.labels() == ANOMALY) >= 0.004 * size[0] * size[1]:
            break
    if paste and track == "obstacle":
        names = _place_obstacles(canvas, layout, paste_rng, sources)
    ids = canvas.paint_ids()
    train_ids = canvas.labels(ids)
    image = canvas.render(look_rng, ids)
    if condition is not None:
        image = apply_condition(image, canvas.depth(ids), condition, look_rng)
    paste_mask = train_ids == ANOMALY
    ood = np.where(train_ids == VOID, VOID, 0).astype(np.uint8)
    if track == "obstacle":
        ood[train_ids != ROAD] = VOID
    ood[paste_mask] = 1
    return SynthFrame(_finish(image, look_rng), train_ids, paste_mask, ood, tuple(names))


def render_scene(seed, size: Sequence[int] = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """An in-distribution street scene: image uint8 ``(H, W, 3)`` and trainIds uint8 ``(H, W)`` (255 void)."""
    frame = render_frame(seed, size, "id")
    return frame.image, frame.train_ids


def render_outlier(seed, size: Sequence[int] = DEFAULT_SIZE) -> Sprite:
    """One object of the OoD-training pool (``OUTLIER_SOURCES``), 15-50% of the image height tall."""
    rng = _streams(seed)[1]
    h, _ = check_size(size)
    source = OUTLIER_SOURCES[int(rng.integers(len(OUTLIER_SOURCES)))]
    return make_sprite(source, rng.uniform(0.15, 0.5) * h, rng)


# ----------------------------------------------------------------------------- writing the dataset


def _save_rgb_png(path: Path, image: np.ndarray) -> None:
    # Huffman-only zlib: as small as adaptive filtering on noisy images, twice as fast.
    Image.fromarray(image).save(path, "PNG", compress_level=6, compress_type=2)


def _save_label_png(path: Path, label: np.ndarray) -> None:
    Image.fromarray(label, mode="L").save(path, "PNG", compress_level=6)


def _save(path: Path, image: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "png":
        _save_rgb_png(path, image)
    elif fmt == "jpg":
        Image.fromarray(image).save(path, "JPEG", quality=92, subsampling=0)
    elif fmt == "webp":
        Image.fromarray(image).save(path, "WEBP", lossless=True, quality=0, method=0)
    else:
        _save_label_png(path, image)


def _jobs(counts: Mapping[str, int]) -> list[tuple[str, int, str | None]]:
    """(split, index, condition) of every frame/object of the splits named in ``counts``."""
    jobs: list[tuple[str, int, str | None]] = []
    for split in ("train", "val", "anomaly", "obstacle"):
        jobs += [(split, i, None) for i in range(counts.get(split, 0))]
    for condition in CONDITIONS:
        jobs += [("shifted", i, condition) for i in range(counts.get("shifted", 0))]
    jobs += [("outliers", i, None) for i in range(counts.get("outliers", 0))]
    for split in VAL_TRACKS:
        jobs += [(split, i, None) for i in range(counts.get(split, 0))]
    return jobs


def _write_job(root: Path, seed: int, size: tuple[int, int], split: str, index: int, condition: str | None,
               summary: dict) -> None:
    """Render and write one frame (or outlier object); record classes and sources in ``summary``."""
    if split == "outliers":
        sprite = render_outlier([seed, _STREAMS[split], index], size)
        oid = f"outlier_{index:04d}"
        _save(root / "outliers" / "images" / f"{oid}.png", sprite.rgb, "png")
        _save(root / "outliers" / "masks" / f"{oid}.png", sprite.mask.astype(np.uint8), "label")
        summary["outliers"][oid] = sprite.source
        return
    if split == "shifted":
        stream = [seed, _STREAMS[split], CONDITIONS.index(condition), index]
        frame = render_frame(stream, size, "id", condition=condition)
        fid, city, base, part = f"{condition}_{index:06d}_000019", condition, root / "shifted", "val"
    elif split in ("train", "val"):
        frame = render_frame([seed, _STREAMS[split], index], size, "id")
        fid, city, base, part = f"{_CITY}_{index:06d}_000019", _CITY, root / "cityscapes", split
    else:
        track = VAL_TRACKS.get(split, split)
        frame = render_frame([seed, _STREAMS[split], index], size, track,
                             sources=VAL_SOURCES if split in VAL_TRACKS else TEST_SOURCES)
        fid = f"{split}_{index:04d}"
        fmt = "jpg" if track == "anomaly" else "webp"
        _save(root / split / "images" / f"{fid}.{fmt}", frame.image, fmt)
        _save(root / split / "labels_masks" / f"{fid}_labels_semantic.png", frame.ood_label, "label")
        _save(root / split / "labels_masks" / f"{fid}_labels_trainIds.png", frame.train_ids, "label")
        summary[split][fid] = list(frame.sources)
        return
    _save(base / "leftImg8bit" / part / city / f"{fid}_leftImg8bit.png", frame.image, "png")
    _save(base / "gtFine" / part / city / f"{fid}_gtFine_labelTrainIds.png", frame.train_ids, "label")
    summary["classes"][split] |= np.bincount(frame.train_ids.ravel(), minlength=256)[:len(CITYSCAPES_CLASSES)] > 0


def _track_entries(counts: Mapping[str, int], summary: dict, splits) -> dict:
    """Manifest entries of the SMIYC-layout tracks ``splits`` (test or validation)."""
    return {split: {"kind": f"smiyc-{VAL_TRACKS.get(split, split)}", "path": split, "n_frames": counts[split],
                    "semantic_labels": SEMANTIC_LABELS, "sources": summary[split]} for split in splits}


def _used_sources(summary: dict, splits) -> list[str]:
    return sorted({s for split in splits for names in summary[split].values() for s in names})


def _build_manifest(seed: int, size: tuple[int, int], counts: Mapping[str, int], summary: dict) -> dict:
    def present(*splits: str) -> list[int]:
        return [int(c) for c in np.flatnonzero(np.logical_or.reduce([summary["classes"][s] for s in splits]))]

    return {
        "schema": "oodseg.synth", "version": 1, "generator_version": GENERATOR_VERSION,
        "seed": seed, "size": list(size), "frames": dict(counts),
        "classes": list(CITYSCAPES_CLASSES),
        "classes_present": present("train", "val"),
        "splits": {
            "train": {"kind": "cityscapes", "path": "cityscapes", "split": "train", "n_frames": counts["train"],
                      "classes_present": present("train")},
            "val": {"kind": "cityscapes", "path": "cityscapes", "split": "val", "n_frames": counts["val"],
                    "classes_present": present("val")},
            **_track_entries(counts, summary, ("anomaly", "obstacle")),
            "shifted": {"kind": "cityscapes", "path": "shifted", "split": "val", "conditions": list(CONDITIONS),
                        "n_frames": counts["shifted"] * len(CONDITIONS), "classes_present": present("shifted")},
            "outliers": {"kind": "folder", "path": "outliers", "n_objects": counts["outliers"], "sources": summary["outliers"]},
            **_track_entries(counts, summary, VAL_TRACKS),
        },
        "sources": {"test": _used_sources(summary, ("anomaly", "obstacle")), "outliers": sorted(set(summary["outliers"].values())),
                    "val": _used_sources(summary, VAL_TRACKS)},
    }


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The manifest of a complete SynthStreet folder, or ``None`` when there is none (incomplete/other folder)."""
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OodsegError(f"{path}: unreadable manifest ({exc})") from None
    return manifest if isinstance(manifest, dict) and manifest.get("schema") == "oodseg.synth" else None


def _matches(manifest: dict | None, seed: int, size: tuple[int, int], counts: Mapping[str, int]) -> bool:
    return bool(manifest) and manifest.get("generator_version") == GENERATOR_VERSION and manifest.get("seed") == seed \
        and manifest.get("size") == list(size) and manifest.get("frames") == dict(counts)


def _missing_val_tracks(manifest: dict | None, seed: int, size: tuple[int, int], counts: Mapping[str, int]) -> list[str]:
    """The validation tracks a complete folder of an earlier generator lacks, when it matches in everything else."""
    if not manifest or manifest.get("generator_version") not in (2, GENERATOR_VERSION) \
            or manifest.get("seed") != seed or manifest.get("size") != list(size):
        return []
    frames = manifest.get("frames") or {}
    missing = [split for split in counts if split not in frames]
    same = all(frames.get(split) == n for split, n in counts.items() if split in frames) and set(frames) <= set(counts)
    return missing if same and set(missing) <= set(VAL_TRACKS) else []


def _render_into(staging: Path, seed: int, size: tuple[int, int], counts: Mapping[str, int], summary: dict,
                 progress: bool) -> None:
    jobs = _jobs(counts)
    for split, index, condition in (progress_track(jobs, "SynthStreet") if progress else jobs):
        _write_job(staging, seed, size, split, index, condition, summary)


@contextlib.contextmanager
def _staging_folder(out: Path, what: str) -> Iterator[Path]:
    """A hidden locked sibling folder of ``out`` (removed at the end; stale ones of killed runs first,
    :func:`oodseg.atomic.staging_directory`); an ``OSError`` becomes one OodsegError line."""
    try:
        with staging_directory(out) as staging:
            publish_mode(staging, folder=True)
            yield staging
    except OSError as exc:
        raise OodsegError(f"{out}: {what} ({exc.strerror or exc})") from None


def _add_val_tracks(out: Path, manifest: dict, seed: int, size: tuple[int, int], counts: Mapping[str, int],
                    missing: list[str], progress: bool) -> dict:
    """Render the ``missing`` validation tracks into an existing complete folder; nothing else is touched.

    Each track is built in a hidden sibling folder and moved in whole; the manifest is rewritten
    last, so an interrupted run leaves the folder as it was (a half-added track is redone).
    """
    with _staging_folder(out, f"adding {', '.join(missing)} failed") as staging:
        summary: dict = {split: {} for split in missing}
        _render_into(staging, seed, size, {split: counts[split] for split in missing}, summary, progress)
        for split in missing:
            shutil.rmtree(out / split, ignore_errors=True)  # left by an interrupted addition (not in the manifest)
            if (staging / split).is_dir():
                os.replace(staging / split, out / split)
        updated = {**manifest, "generator_version": GENERATOR_VERSION, "frames": {**manifest["frames"], **{
            split: counts[split] for split in missing}}}
        updated["splits"] = {**manifest["splits"], **_track_entries(counts, summary, missing)}
        updated["sources"] = {**manifest["sources"], "val": sorted(set(manifest["sources"].get("val", []))
                                                                   | set(_used_sources(summary, missing)))}
        write_json(out / MANIFEST_NAME, updated)
    return {**updated, "cached": False, "added": missing}


def complete(out: str | os.PathLike, progress: bool = True) -> dict:
    """Bring an existing SynthStreet folder up to date with its own seed, size and counts: adds the validation
    tracks (default counts) to a folder of an earlier generator; a no-op on a current one."""
    manifest = read_manifest(out)
    if manifest is None:
        raise OodsegError(f"{out}: not a complete SynthStreet folder (no {MANIFEST_NAME}); run oodseg synth first")
    return generate(out, seed=manifest["seed"], size=manifest["size"], frames=manifest["frames"], progress=progress)


def generate(out: str | os.PathLike, seed: int = 0, size: Sequence[int] = DEFAULT_SIZE,
             frames: Mapping[str, int] | str | None = None, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the SynthStreet benchmark into ``out`` and return its manifest.

    ``frames``: counts per split (``train``, ``val``, ``anomaly``, ``obstacle``, ``shifted``
    per condition, ``outliers``, ``anomaly_val``, ``obstacle_val``), missing ones from
    ``DEFAULT_FRAMES``. If ``out`` already holds a complete dataset with the same seed, size
    and counts, nothing is written and the manifest comes back with ``"cached": True`` (unless
    ``overwrite``). A complete dataset of generator version 2 (before the validation tracks)
    that matches in everything else gets the validation tracks added, its files untouched
    (``"added"`` names them). Any other non-empty ``out`` needs ``overwrite=True``. The data is
    built in a hidden sibling folder and renamed onto ``out`` at the end (manifest last), so an
    interrupted run never leaves a complete-looking dataset.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OodsegError(f"seed {seed!r}: expected a non-negative integer")
    seed, size, counts = int(seed), check_size(size), parse_frames(frames)
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise OodsegError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        manifest = read_manifest(out)
        if not overwrite:
            if _matches(manifest, seed, size, counts):
                return {**manifest, "cached": True}  # type: ignore[dict-item]
            missing = _missing_val_tracks(manifest, seed, size, counts)
            if missing:
                return _add_val_tracks(out, manifest, seed, size, counts, missing, progress)  # type: ignore[arg-type]
            what = "holds a SynthStreet dataset with other settings" if manifest else "is not empty"
            raise OodsegError(f"{out}: {what} (pass --overwrite to replace it)")
    with _staging_folder(out, "cannot write the output directory") as staging:
        summary: dict = {"classes": {s: np.zeros(len(CITYSCAPES_CLASSES), bool) for s in ("train", "val", "shifted")},
                         **{split: {} for split in ("anomaly", "obstacle", "outliers", *VAL_TRACKS)}}
        _render_into(staging, seed, size, counts, summary, progress)
        manifest = _build_manifest(seed, size, counts, summary)
        write_json(staging / MANIFEST_NAME, manifest)
        if out.exists():
            with staging_directory(out, "old") as retired:
                os.replace(out, retired / "data")
                os.replace(staging, out)
        else:
            os.replace(staging, out)
    return {**manifest, "cached": False}
