"""SynthStreet: determinism, label validity, exact paste masks, obstacle placement, source
disjointness, class coverage, perspective scaling, corruptions, caching/overwrite and bad input."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from oodseg.cli import main
from oodseg.data import synthetic
from oodseg.data.synth.canvas import ANOMALY, Camera, Canvas, Paint
from oodseg.data.synth.objects import OUTLIER_SOURCES, TEST_SOURCES
from oodseg.data.synth.scene import PERSON, ROAD, SKY, _draw_person
from oodseg.data.synthetic import generate, render_frame, render_scene
from oodseg.errors import OodsegError

TINY = (64, 128)
TINY_FRAMES = "train=2,val=1,anomaly=2,obstacle=2,shifted=1,outliers=2"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate(out, seed=3, size=TINY, frames=TINY_FRAMES, progress=False)
    return out


def test_same_seed_gives_byte_identical_files(tiny_dataset, tmp_path):
    generate(tmp_path / "b", seed=3, size=TINY, frames=TINY_FRAMES, progress=False)
    first, second = _files(tiny_dataset), _files(tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    # 2 train + 1 val (image + label), 2+2 SMIYC frames (image + OoD label + semantic label), 4 shifted,
    # 2 outliers, manifest
    assert len(first) == 2 * 3 + 3 * 4 + 2 * 4 + 2 * 2 + 1


def test_frames_do_not_depend_on_generation_order_or_counts(tiny_dataset, tmp_path):
    generate(tmp_path / "c", seed=3, size=TINY, frames="train=1,val=0,anomaly=0,obstacle=0,shifted=0,outliers=0", progress=False)
    name = "cityscapes/leftImg8bit/train/synth/synth_000000_000019_leftImg8bit.png"
    assert (tmp_path / "c" / name).read_bytes() == (tiny_dataset / name).read_bytes()
    generate(tmp_path / "d", seed=4, size=TINY, frames="train=1,val=0,anomaly=0,obstacle=0,shifted=0,outliers=0", progress=False)
    assert (tmp_path / "d" / name).read_bytes() != (tiny_dataset / name).read_bytes()


def test_written_files_match_in_memory_render_and_have_valid_labels(tiny_dataset):
    root = tiny_dataset
    for path in root.glob("cityscapes/gtFine/*/synth/*_gtFine_labelTrainIds.png"):
        label = np.asarray(Image.open(path))
        assert label.shape == TINY and label.dtype == np.uint8
        assert set(np.unique(label)) <= set(range(19)) | {255}
    for path in root.glob("shifted/gtFine/val/*/*_gtFine_labelTrainIds.png"):
        assert set(np.unique(np.asarray(Image.open(path)))) <= set(range(19)) | {255}
    for track in ("anomaly", "obstacle"):
        labels = sorted(root.glob(f"{track}/labels_masks/*_labels_semantic.png"))
        assert len(labels) == 2
        for path in labels:
            values = set(np.unique(np.asarray(Image.open(path))))
            assert values <= {0, 1, 255} and 1 in values
    for path in root.glob("outliers/masks/*.png"):
        mask = np.asarray(Image.open(path))
        assert set(np.unique(mask)) <= {0, 1} and mask.any()
        rgb = np.asarray(Image.open(root / "outliers/images" / path.name))
        assert rgb.shape == mask.shape + (3,)
        assert not rgb[mask == 0].any()  # black outside the object
    # lossless formats hold exactly what render_frame draws from the frame's stream
    image, train_ids = render_scene([3, 1, 0], TINY)
    stem = "cityscapes/{}/train/synth/synth_000000_000019_{}.png"
    assert np.array_equal(np.asarray(Image.open(root / stem.format("leftImg8bit", "leftImg8bit"))), image)
    assert np.array_equal(np.asarray(Image.open(root / stem.format("gtFine", "gtFine_labelTrainIds"))), train_ids)
    obstacle = render_frame([3, 4, 1], TINY, "obstacle")
    assert np.array_equal(np.asarray(Image.open(root / "obstacle/images/obstacle_0001.webp").convert("RGB")), obstacle.image)
    assert np.array_equal(np.asarray(Image.open(root / "obstacle/labels_masks/obstacle_0001_labels_semantic.png")), obstacle.ood_label)


@pytest.mark.parametrize("seed", range(6))
def test_anomaly_label_is_exactly_the_pasted_pixels(seed):
    with_objects = render_frame(seed, (128, 256), "anomaly")
    without = render_frame(seed, (128, 256), "anomaly", paste=False)
    mask = with_objects.paste_mask
    assert mask.any() and with_objects.sources
    assert np.array_equal(with_objects.ood_label == 1, mask)
    assert np.all(with_objects.train_ids[mask] == ANOMALY)
    # outside the paste nothing changed, neither labels nor pixels
    assert np.array_equal(with_objects.train_ids[~mask], without.train_ids[~mask])
    assert np.array_equal(with_objects.image[~mask], without.image[~mask])
    changed = np.any(with_objects.image != without.image, axis=-1)
    assert changed[mask].mean() > 0.9  # the pasted object really is there (black cut-out pixels aside)
    assert set(np.unique(without.ood_label)) <= {0, 255}


@pytest.mark.parametrize("seed", range(6))
def test_obstacles_stand_on_road_and_off_road_is_void(seed):
    frame = render_frame(seed, (128, 256), "obstacle")
    scene = render_frame(seed, (128, 256), "obstacle", paste=False)
    mask = frame.paste_mask
    assert mask.any()
    assert np.all(scene.train_ids[mask] == ROAD)
    assert np.array_equal(frame.ood_label == 1, mask)
    assert np.array_equal(frame.ood_label == 0, (scene.train_ids == ROAD) & ~mask)
    assert np.all(frame.ood_label[scene.train_ids != ROAD] == 255)


@pytest.mark.parametrize("track", ["anomaly", "obstacle"])
def test_semantic_track_labels_are_the_scene_with_254_on_the_smiyc_anomalies(tiny_dataset, track):
    """labels_trainIds: 254 exactly where the SMIYC label is 1, the un-pasted scene's trainIds elsewhere
    (on-road and, as full scene labels, off-road too); read by open_dataset(..., target="semantic")."""
    from oodseg.data import open_dataset

    kind = f"smiyc-{track}"
    semantic = open_dataset(kind, tiny_dataset / track, target="semantic")
    ood = open_dataset(kind, tiny_dataset / track)
    assert semantic.label_type == "semantic" and semantic.fids == ood.fids == [f"{track}_0000", f"{track}_0001"]
    stream = {"anomaly": 3, "obstacle": 4}[track]
    assert json.loads((tiny_dataset / "synthstreet.json").read_text())["splits"][track]["semantic_labels"] == \
        "labels_masks/{fid}_labels_trainIds.png"
    for index, fid in enumerate(semantic.fids):
        labels = semantic.read_label(fid)
        smiyc = ood.read_label(fid)
        raw = np.asarray(Image.open(tiny_dataset / track / "labels_masks" / f"{fid}_labels_trainIds.png"))
        assert np.array_equal(labels, raw)
        scene = render_frame([3, stream, index], TINY, track, paste=False).train_ids
        assert np.array_equal(labels == ANOMALY, smiyc == 1) and (smiyc == 1).any()
        assert np.array_equal(labels[smiyc != 1], scene[smiyc != 1])
        assert np.all(labels[smiyc == 0] < 19)           # on-road / inlier pixels carry a trainId
        if track == "obstacle":
            assert np.all(scene[smiyc == 0] == ROAD)
            off_road = smiyc == 255
            assert (labels[off_road] != ROAD).any() and not np.all(labels[off_road] == 255)


def test_outlier_pool_and_test_anomalies_share_no_source(tiny_dataset):
    manifest = json.loads((tiny_dataset / "synthstreet.json").read_text())
    assert manifest["schema"] == "oodseg.synth" and manifest["seed"] == 3 and manifest["size"] == list(TINY)
    frame_sources = [s for track in ("anomaly", "obstacle") for names in manifest["splits"][track]["sources"].values() for s in names]
    pool = set(manifest["splits"]["outliers"]["sources"].values())
    assert frame_sources and pool
    assert set(frame_sources) == set(manifest["sources"]["test"]) and pool == set(manifest["sources"]["outliers"])
    objects = {s.partition(":")[2] for s in frame_sources}
    assert not objects & {s.partition(":")[2] for s in pool}
    assert not {s.partition(":")[2] for s in TEST_SOURCES} & {s.partition(":")[2] for s in OUTLIER_SOURCES}
    assert not {s.partition(":")[0] for s in TEST_SOURCES if s.startswith("novel")} & \
        {s.partition(":")[0] for s in OUTLIER_SOURCES if s.startswith("novel")}


def test_default_size_scenes_cover_at_least_15_classes():
    present = np.zeros(256, bool)
    for seed in range(25):
        image, train_ids = render_scene(seed)
        assert image.shape == (256, 512, 3) and image.dtype == np.uint8 and train_ids.shape == (256, 512)
        present |= np.bincount(train_ids.ravel(), minlength=256) > 0
    classes = set(np.flatnonzero(present[:19]))
    assert len(classes) >= 15, classes
    assert not present[19:255].any()


def test_people_are_scaled_by_distance():
    cam = Camera(256, 512, horizon=100.0, center_x=256.0, focal=400.0, elevation=1.5)
    heights = []
    for z in (8.0, 16.0, 32.0):
        canvas = Canvas(cam, Paint(SKY, (0, 0, 0)))
        _draw_person(canvas, np.random.default_rng(1), 0.0, z)
        rows = np.flatnonzero((canvas.labels() == PERSON).any(1))
        heights.append(rows[-1] - rows[0] + 1)
        assert abs(rows[-1] + 1 - cam.ground_row(z)) <= 1.5  # feet on the ground line of depth z
    # same person (same seed) at twice the distance is half as tall (pinhole: h_px = f * h_m / z)
    assert heights[0] / heights[1] == pytest.approx(2.0, rel=0.06)
    assert heights[1] / heights[2] == pytest.approx(2.0, rel=0.12)


def test_shifted_conditions_change_pixels_not_labels():
    clean = render_frame(11, (128, 256), "id")
    for condition in ("night", "fog", "blur", "noise"):
        shifted = render_frame(11, (128, 256), "id", condition=condition)
        assert np.array_equal(shifted.train_ids, clean.train_ids)
        assert np.abs(shifted.image.astype(int) - clean.image).mean() > 3.0
    night = render_frame(11, (128, 256), "id", condition="night")
    assert night.image.mean() < 0.6 * clean.image.mean()


def test_rerun_is_cached_and_overwrite_replaces(tmp_path):
    out = tmp_path / "ds"
    frames = "train=1,val=0,anomaly=1,obstacle=0,shifted=0,outliers=1"
    first = generate(out, seed=1, size=TINY, frames=frames, progress=False)
    stamp = (out / "synthstreet.json").stat().st_mtime_ns
    again = generate(out, seed=1, size=TINY, frames=frames, progress=False)
    assert not first["cached"] and again["cached"]
    assert (out / "synthstreet.json").stat().st_mtime_ns == stamp
    with pytest.raises(OodsegError, match="other settings.*--overwrite"):
        generate(out, seed=2, size=TINY, frames=frames, progress=False)
    replaced = generate(out, seed=2, size=TINY, frames=frames, overwrite=True, progress=False)
    assert replaced["seed"] == 2 and json.loads((out / "synthstreet.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no staging or retired folders left


def test_interrupted_run_leaves_previous_data_untouched(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    frames = "train=2,val=0,anomaly=0,obstacle=0,shifted=0,outliers=0"
    generate(out, seed=1, size=TINY, frames=frames, progress=False)
    before = _files(out)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = synthetic._write_job
    monkeypatch.setattr(synthetic, "_write_job", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(out, seed=5, size=TINY, frames=frames, overwrite=True, progress=False)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "fresh", seed=5, size=TINY, frames=frames, progress=False)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.mark.parametrize("kwargs, message", [
    ({"size": (32, 128)}, "height must be a multiple of 8 between 64 and 4096"),
    ({"size": (64, 130)}, "width must be a multiple of 8"),
    ({"frames": "train=-1"}, "train=-1 must be between 0"),
    ({"frames": "train=10000000"}, "must be between 0 and 100000"),
    ({"frames": "trian=3"}, "unknown split 'trian'"),
    ({"frames": "train=abc"}, "not an integer"),
    ({"seed": -1}, "non-negative integer"),
])
def test_bad_arguments_raise_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(OodsegError, match=message) as info:
        generate(tmp_path / "x", **{"size": TINY, "progress": False, **kwargs})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_unusable_output_paths(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    with pytest.raises(OodsegError, match="is not empty.*--overwrite"):
        generate(tmp_path / "full", size=TINY, frames="train=1", progress=False)
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OodsegError, match="not a directory"):
        generate(tmp_path / "afile", size=TINY, progress=False)
    with pytest.raises(OodsegError, match="cannot write the output directory"):
        generate(tmp_path / "afile" / "sub", size=TINY, progress=False)


def test_cli_synth_json_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--size", "64x128", "--seed", "2",
            "--frames", "train=1,val=1,anomaly=1,obstacle=1,shifted=0,outliers=1", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["seed"] == 2 and manifest["frames"]["train"] == 1 and manifest["cached"] is False
    assert (out / "anomaly/images/anomaly_0000.jpg").is_file()
    again = runner.invoke(main, args)
    assert again.exit_code == 0 and json.loads(again.output)["cached"] is True
    bad = runner.invoke(main, ["synth", "--out", str(tmp_path / "z"), "--size", "60x128"])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error:") and len(bad.output.strip().splitlines()) == 1
    helptext = runner.invoke(main, ["synth", "--help"])
    assert helptext.exit_code == 0 and "oodseg synth --out" in helptext.output
