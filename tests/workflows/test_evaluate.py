"""`oodseg evaluate` and evaluation.evaluate_dataset on a small SMIYC tree with hdf5 scores.

References are independent: scikit-learn on the pooled valid pixels (scores as stored,
float16) and a brute-force loop over connected components written here from SPEC §4.2.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from oodseg.cli import main
from oodseg.data import open_dataset, write_score
from oodseg.errors import OodsegError
from oodseg.metrics.smiyc import smiyc_pixel_metrics
from oodseg.workflows.evaluate import evaluate_dataset

H, W, N = 48, 64, 5
KEYS = ("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold", "sIoU", "PPV", "mean_F1", "n_frames", "n_pixels")


def make_smiyc(root: Path, rng, n=N, score_shape=(H, W)):
    """SMIYC obstacle-like tree: road (0) band, off-road void (255), 1-3 obstacles (1) per frame,
    plus hdf5 scores under root/../scores/energy/<root name>. Returns (scores dir, labels, scores)."""
    scores_dir = root.parent / "scores" / "energy" / root.name
    labels, scores = {}, {}
    for i in range(n):
        fid = f"scene_{i:02d}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{fid}.webp", lossless=True)
        label = np.full((H, W), 255, np.uint8)
        label[H // 4:, :] = 0
        for _ in range(rng.integers(1, 4)):
            h, w = rng.integers(3, 12, size=2)
            y, x = rng.integers(H // 4, H - h), rng.integers(0, W - w)
            label[y:y + h, x:x + w] = 1
        label[H - 3:, :5] = 1      # a tiny component (< min_gt = 10 px for the obstacle track)
        (root / "labels_masks").mkdir(exist_ok=True)
        Image.fromarray(label).save(root / "labels_masks" / f"{fid}_labels_semantic.png")
        yy, xx = np.mgrid[0:score_shape[0], 0:score_shape[1]]
        up = label if score_shape == (H, W) else label[::2, ::2]
        score = (up == 1) * 2.0 + rng.normal(0, 0.8, score_shape) + 0.01 * (yy + xx)
        write_score(scores_dir / f"{fid}.hdf5", score.astype(np.float32))
        labels[fid] = label
        with h5py.File(scores_dir / f"{fid}.hdf5", "r") as f:
            scores[fid] = f["value"][:].astype(np.float32)
    return scores_dir, labels, scores


def sklearn_pixel_reference(labels, scores):
    y = np.concatenate([labels[f][labels[f] != 255] for f in sorted(labels)])
    s = np.concatenate([scores[f][labels[f] != 255] for f in sorted(labels)]).astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
    best = int(np.argmax(f1))
    return {"AP": average_precision_score(y, s), "AUROC": roc_auc_score(y, s),
            "FPR95": float(fpr[np.argmax(tpr >= 0.95)]), "best_F1": float(f1[best]),
            "best_F1_threshold": float(thresholds[best]), "n_pixels": int(y.size)}


def brute_force_components(labels, scores, theta, min_pred, min_gt):
    """SPEC §4.2 step by step with explicit loops over components."""
    eight = np.ones((3, 3), bool)
    sious, ppvs = [], []
    taus = np.linspace(0.25, 0.75, 11)
    tp = np.zeros(11)
    fn = np.zeros(11)
    fp = np.zeros(11)
    for fid in sorted(labels):
        label, score = labels[fid], scores[fid]
        void = label == 255
        pred_ids, n_pred = ndimage.label((score > theta) & ~void, structure=eight)
        gt_ids, n_gt = ndimage.label(label == 1, structure=eight)
        for k in range(1, n_pred + 1):
            if (pred_ids == k).sum() < min_pred:
                pred_ids[pred_ids == k] = 0
        for k in range(1, n_gt + 1):
            if (gt_ids == k).sum() < min_gt:
                void |= gt_ids == k
                gt_ids[gt_ids == k] = 0
        gt_ids[void] = 0
        pred_ids[void] = 0
        frame_siou, frame_ppv = [], []
        for k in range(1, n_gt + 1):
            gk = gt_ids == k
            if not gk.any():
                continue
            touching = [j for j in np.unique(pred_ids[gk]) if j]
            p_hat = np.isin(pred_ids, touching)
            others = (gt_ids > 0) & ~gk
            frame_siou.append((gk & p_hat).sum() / ((gk | p_hat) & ~others).sum())
        for j in range(1, n_pred + 1):
            pj = pred_ids == j
            if not pj.any():
                continue
            touching = [k for k in np.unique(gt_ids[pj]) if k]
            frame_ppv.append((pj & np.isin(gt_ids, touching)).sum() / pj.sum())
        for t, tau in enumerate(taus):
            tp[t] += sum(v >= tau for v in frame_siou)
            fn[t] += sum(v < tau for v in frame_siou)
            fp[t] += sum(v < tau for v in frame_ppv)
        sious += frame_siou
        ppvs += frame_ppv
    f1 = 2 * tp / (2 * tp + fn + fp)
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"sIoU": mean(sious), "PPV": mean(ppvs), "mean_F1": float(f1.mean())}


@pytest.fixture
def smiyc(tmp_path, rng):
    root = tmp_path / "obstacle"
    scores_dir, labels, scores = make_smiyc(root, rng)
    return root, scores_dir, labels, scores


def assert_matches_reference(result, labels, scores, theta=None, min_sizes=(50, 10), atol=1e-6):
    pixel = sklearn_pixel_reference(labels, scores)
    for key in ("AP", "AUROC", "FPR95", "best_F1"):
        assert result[key] == pytest.approx(pixel[key], abs=atol), key
    assert result["best_F1_threshold"] == pytest.approx(pixel["best_F1_threshold"], abs=max(atol, 1e-6))
    assert result["n_pixels"] == pixel["n_pixels"] and result["n_frames"] == len(labels)
    theta = pixel["best_F1_threshold"] if theta is None else theta
    comp = brute_force_components(labels, scores, theta, *min_sizes)
    for key in ("sIoU", "PPV", "mean_F1"):
        if np.isnan(comp[key]):   # no components: undefined, stored as JSON null
            assert result[key] is None, key
        else:
            assert result[key] == pytest.approx(comp[key], abs=1e-9), key


def test_evaluate_dataset_matches_sklearn_and_brute_force(smiyc):
    root, scores_dir, labels, scores = smiyc
    result = evaluate_dataset(open_dataset("smiyc-obstacle", root), scores_dir, track="obstacle", protocol="exact")
    assert result["protocol"] == "exact" and result["smiyc_bins"] is None
    assert result["schema"] == "oodseg.evaluate" and result["version"] == 1
    assert (result["dataset"], result["dataset_kind"], result["method"]) == ("obstacle", "smiyc-obstacle", "energy")
    assert result["root"] == str(root.resolve()) and result["scores"] == str(scores_dir.resolve())
    assert_matches_reference(result, labels, scores)
    assert all(result[k] is not None for k in KEYS)
    curves = result["curves"]
    assert len(curves["pr"]["recall"]) <= 512 and len(curves["roc"]["fpr"]) <= 512
    assert curves["roc"]["fpr"][0] == 0 and curves["roc"]["tpr"][-1] == pytest.approx(1.0)


def test_anomaly_track_sizes_and_given_threshold(smiyc):
    root, scores_dir, labels, scores = smiyc
    result = evaluate_dataset(open_dataset("smiyc-obstacle", root), scores_dir, track="anomaly", threshold=0.8,
                              protocol="exact")
    assert result["component_threshold"] == 0.8
    assert_matches_reference(result, labels, scores, theta=0.8, min_sizes=(500, 100))


def test_streaming_mode_close_to_exact(smiyc):
    root, scores_dir, labels, scores = smiyc
    ds = open_dataset("smiyc-obstacle", root)
    exact = evaluate_dataset(ds, scores_dir, track="obstacle", mode="exact", protocol="exact")
    streaming = evaluate_dataset(ds, scores_dir, track="obstacle", mode="streaming", protocol="exact")
    assert streaming["mode"] == "streaming"
    for key in ("AP", "AUROC", "FPR95"):
        assert streaming[key] == pytest.approx(exact[key], abs=1e-3)


def test_smiyc_protocol_is_the_default_on_smiyc_layouts(smiyc):
    """Pixel numbers of the official binning (verified in test_metrics_smiyc) on the stored (float32) maps;
    components at θ compared in the maps' dtype, as the official code under numpy 1.23."""
    root, scores_dir, labels, scores = smiyc
    result = evaluate_dataset(open_dataset("smiyc-obstacle", root), scores_dir, track="obstacle")
    assert result["protocol"] == "smiyc" and result["smiyc_bins"] == 768
    fids = sorted(labels)
    stored = np.stack([scores[f] for f in fids])  # exactly the file values (float32 files)
    assert stored.dtype == np.float32
    official = smiyc_pixel_metrics(stored, np.stack([labels[f] for f in fids]))
    for key in ("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold"):
        assert result[key] == official[key], key
    assert result["component_threshold"] == official["best_F1_threshold"]
    theta32 = float(np.float32(official["best_F1_threshold"]))
    comp = brute_force_components(labels, scores, theta32, 50, 10)
    for key in ("sIoU", "PPV", "mean_F1"):
        assert result[key] == pytest.approx(comp[key], abs=1e-12), key
    exact = evaluate_dataset(open_dataset("smiyc-obstacle", root), scores_dir, track="obstacle", protocol="exact")
    assert exact["AP"] != result["AP"]


def test_protocol_defaults_and_refusals(smiyc):
    root, scores_dir, _, _ = smiyc
    ds = open_dataset("smiyc-obstacle", root)
    assert evaluate_dataset(ds, scores_dir, aggregate="per_image")["protocol"] == "exact"
    with pytest.raises(OodsegError, match="protocol: smiyc pools pixels"):
        evaluate_dataset(ds, scores_dir, aggregate="per_image", protocol="smiyc")
    with pytest.raises(OodsegError, match="protocol: expected one of"):
        evaluate_dataset(ds, scores_dir, protocol="official")


@pytest.mark.parametrize("sign", [-1, 1])
@pytest.mark.parametrize("protocol", ["exact", "smiyc"])
def test_streaming_equals_exact_on_float16_scores(tmp_path, rng, sign, protocol):
    """Energy-like negative (and positive) float16 maps: streaming thresholds and component metrics equal exact."""
    root = tmp_path / "obstacle"
    scores_dir, labels, _ = make_smiyc(root, rng)
    signed = tmp_path / "scores" / "signed" / "obstacle"
    for fid, label in labels.items():
        energy = sign * (8.0 + 3.0 * rng.standard_normal((H, W))) + 2.5 * (label == 1)
        write_score(signed / f"{fid}.hdf5", energy.astype(np.float32), dtype="float16")
    ds = open_dataset("smiyc-obstacle", root)
    exact = evaluate_dataset(ds, signed, track="obstacle", mode="exact", protocol=protocol)
    streaming = evaluate_dataset(ds, signed, track="obstacle", mode="streaming", protocol=protocol)
    assert (exact["best_F1_threshold"] < 0) == (sign < 0)
    for key in ("AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold", "component_threshold",
                "sIoU", "PPV", "mean_F1", "n_pred_components"):
        assert streaming[key] == exact[key], key


def _bilinear_half_pixel(img, out_h, out_w):
    """Independent numpy bilinear resize with align_corners=False (half-pixel centres, edge clamp)."""
    in_h, in_w = img.shape
    ys = np.maximum((np.arange(out_h) + 0.5) * in_h / out_h - 0.5, 0)
    xs = np.maximum((np.arange(out_w) + 0.5) * in_w / out_w - 0.5, 0)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, in_h - 1), np.minimum(x0 + 1, in_w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def test_resize_low_resolution_scores(tmp_path, rng):
    root = tmp_path / "obstacle"
    scores_dir, labels, low = make_smiyc(root, rng, n=3, score_shape=(H // 2, W // 2))
    ds = open_dataset("smiyc-obstacle", root)
    with pytest.raises(OodsegError, match=r"scene_00\.hdf5: score size \(24, 32\) differs from label size \(48, 64\)"):
        evaluate_dataset(ds, scores_dir, track="obstacle")
    result = evaluate_dataset(ds, scores_dir, track="obstacle", resize=True, protocol="exact")
    upsampled = {f: _bilinear_half_pixel(s.astype(np.float64), H, W) for f, s in low.items()}
    assert_matches_reference(result, labels, upsampled, atol=1e-5)


def test_roi_makes_outside_void(smiyc):
    root, scores_dir, labels, scores = smiyc
    roi = np.zeros((H, W), bool)
    roi[:, : W // 2] = True
    result = evaluate_dataset(open_dataset("smiyc-obstacle", root), scores_dir, track="obstacle", roi=roi,
                              protocol="exact")
    cut = {f: np.where(roi, l, 255).astype(np.uint8) for f, l in labels.items()}
    assert_matches_reference(result, cut, scores)
    assert result["n_pixels"] < evaluate_dataset(open_dataset("smiyc-obstacle", root), scores_dir)["n_pixels"]


def test_semantic_and_unlabelled_datasets_refused(tmp_path, rng):
    cs = tmp_path / "cs"
    (cs / "leftImg8bit" / "val" / "c").mkdir(parents=True)
    (cs / "gtFine" / "val" / "c").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(cs / "leftImg8bit" / "val" / "c" / "c_0_0_leftImg8bit.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(cs / "gtFine" / "val" / "c" / "c_0_0_gtFine_labelTrainIds.png")
    with pytest.raises(OodsegError, match="semantic"):
        evaluate_dataset(open_dataset("cityscapes", cs), tmp_path)
    with pytest.raises(OodsegError, match="has no labels"):
        evaluate_dataset(open_dataset("images", cs), tmp_path)


# --- CLI ------------------------------------------------------------------------------------

def run_cli(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_cli_end_to_end_json_and_table(smiyc, tmp_path):
    root, scores_dir, labels, scores = smiyc
    out = tmp_path / "results" / "eval.json"
    res = run_cli("--dataset", "smiyc-obstacle", "--root", root, "--scores", scores_dir, "--save", out,
                  "--protocol", "exact")
    assert res.exit_code == 0, res.output
    assert "sIoU" in res.stdout and "mean F1" in res.stdout
    result = json.loads(out.read_text())
    assert all(k in result for k in KEYS) and result["track"] == "obstacle"
    assert_matches_reference(result, labels, scores)
    # refuses to overwrite, then overwrites with --overwrite
    before = out.read_text()
    res = run_cli("--root", root, "--scores", scores_dir, "--save", out)
    assert res.exit_code == 2 and "already exists" in res.stderr and out.read_text() == before
    res = run_cli("--root", root, "--scores", scores_dir, "--save", out, "--overwrite", "--mode", "streaming")
    assert res.exit_code == 0 and json.loads(out.read_text())["mode"] == "streaming"
    res = run_cli("--root", root, "--scores", scores_dir, "--json", "--protocol", "exact")
    assert res.exit_code == 0 and json.loads(res.stdout)["AP"] == pytest.approx(result["AP"])
    res = run_cli("--root", root, "--scores", scores_dir)  # smiyc layout: the official protocol by default
    assert res.exit_code == 0 and "smiyc protocol" in res.stdout


def test_cli_json_flag_and_the_old_json_file_spelling(smiyc, tmp_path):
    """--json prints (as on every command), --save FILE writes; the old --json FILE still writes FILE and warns,
    --json - still prints; --json FILE together with --save is refused."""
    root, scores_dir, _, _ = smiyc
    base = ("--root", root, "--scores", scores_dir, "--protocol", "exact")
    printed = json.loads(run_cli(*base, "--json").stdout)
    both = run_cli(*base, "--json", "--save", tmp_path / "both.json")
    assert json.loads(both.stdout) == printed == json.loads((tmp_path / "both.json").read_text())
    assert json.loads(run_cli(*base, "--json", "-").stdout) == printed
    old = run_cli(*base, "--json", tmp_path / "old.json")
    assert old.exit_code == 0 and "sIoU" in old.stdout and json.loads((tmp_path / "old.json").read_text()) == printed
    assert "warning: --json " in old.stderr and "use --save" in old.stderr
    clash = run_cli(*base, "--json", tmp_path / "x.json", "--save", tmp_path / "y.json")
    assert clash.exit_code == 2 and "give the file with --save only" in clash.stderr


def _corrupt_label(root, scores_dir):
    path = root / "labels_masks" / "scene_01_labels_semantic.png"
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 3
    Image.fromarray(label).save(path)
    return "scene_01_labels_semantic.png: label value 3"


def _small_score(root, scores_dir):
    write_score(scores_dir / "scene_02.hdf5", np.zeros((H - 1, W), np.float32))
    return "scene_02.hdf5: score size (47, 64) differs from label size (48, 64)"


def _nan_score(root, scores_dir):
    with h5py.File(scores_dir / "scene_03.hdf5", "w") as f:
        f["value"] = np.full((H, W), np.nan, np.float16)
    return "scene_03.hdf5: score map contains NaN or Inf"


def _missing_score(root, scores_dir):
    (scores_dir / "scene_04.hdf5").unlink()
    return "scene_04.hdf5: missing score file for frame scene_04"


def _corrupt_score(root, scores_dir):
    (scores_dir / "scene_00.hdf5").write_bytes(b"\x89HDF\r\n garbage")
    return "scene_00.hdf5: unreadable score file"


def _empty_dataset(root, scores_dir):
    shutil.rmtree(root / "images")
    (root / "images").mkdir()
    return "no frames found for dataset kind smiyc-obstacle"


def _missing_label(root, scores_dir):
    (root / "labels_masks" / "scene_02_labels_semantic.png").unlink()
    return "scene_02_labels_semantic.png: missing label for image"


@pytest.mark.parametrize("break_input", [_corrupt_label, _small_score, _nan_score, _missing_score, _corrupt_score,
                                         _empty_dataset, _missing_label])
def test_cli_bad_input_one_line_error_nothing_written(smiyc, tmp_path, break_input):
    root, scores_dir, _, _ = smiyc
    expected = break_input(root, scores_dir)
    out = tmp_path / "eval.json"
    res = run_cli("--dataset", "smiyc-obstacle", "--root", root, "--scores", scores_dir, "--save", out)
    assert res.exit_code != 0
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and expected in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".eval.json*"))


def test_cli_dataset_options_and_bad_option(tmp_path, rng):
    root = tmp_path / "fs"
    make_smiyc(tmp_path / "obstacle", rng, n=2)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for p in (tmp_path / "obstacle" / "images").iterdir():
        shutil.copy(p, root / "images" / p.name)
        label = np.asarray(Image.open(tmp_path / "obstacle" / "labels_masks" / f"{p.stem}_labels_semantic.png"))
        Image.fromarray(np.select([label == 0, label == 1], [10, 20], 99).astype(np.uint8)).save(root / "masks" / f"{p.stem}.png")
    scores = tmp_path / "scores" / "energy" / "obstacle"
    res = run_cli("--dataset", "folder", "--root", root, "--scores", scores, "-o", "mapping=10:0,20:1,99:255",
                  "--track", "obstacle", "--json")
    assert res.exit_code == 0, res.output
    ref = run_cli("--root", tmp_path / "obstacle", "--scores", scores, "--json", "--protocol", "exact")
    folder_result, smiyc_result = json.loads(res.stdout), json.loads(ref.stdout)
    for key in KEYS:
        assert folder_result[key] == smiyc_result[key], key
    res = run_cli("--dataset", "folder", "--root", root, "--scores", scores, "-o", "mapping")
    assert res.exit_code == 2 and "expected KEY=VALUE" in res.stderr


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(smiyc, tmp_path, run_oodseg):
    """2 gloo processes (frames sharded by rank, states all-reduced) give the single-process numbers."""
    root, scores_dir, _, _ = smiyc
    results = {}
    for mode in ("exact", "streaming"):
        one = tmp_path / f"one_{mode}.json"
        two = tmp_path / f"two_{mode}.json"
        base = ["evaluate", "--root", root, "--scores", scores_dir, "--mode", mode]
        run_oodseg(*base, "--save", one)
        run_oodseg(*base, "--save", two, nproc=2)
        results[mode] = json.loads(one.read_text()), json.loads(two.read_text())
    for one, two in results.values():
        for key in KEYS:
            assert two[key] == pytest.approx(one[key], abs=1e-12), key


@pytest.mark.parametrize("protocol, mode", [("smiyc", "exact"), ("smiyc", "streaming"), ("exact", "exact")])
def test_worker_processes_give_the_inline_numbers(tmp_path, rng, protocol, mode):
    """Frames read and evaluated in 3 worker processes (chunks merged in order) = inline, value for value;
    and inline still matches the independent references."""
    root = tmp_path / "obstacle"
    scores_dir, labels, scores = make_smiyc(root, rng, n=9)
    dataset = open_dataset("smiyc-obstacle", root)
    inline = evaluate_dataset(dataset, scores_dir, track="obstacle", mode=mode, protocol=protocol, workers=0)
    parallel = evaluate_dataset(dataset, scores_dir, track="obstacle", mode=mode, protocol=protocol, workers=3)
    assert parallel == inline
    given = evaluate_dataset(dataset, scores_dir, track="obstacle", mode=mode, protocol=protocol, workers=3,
                             threshold=0.8)
    assert given == evaluate_dataset(dataset, scores_dir, track="obstacle", mode=mode, protocol=protocol,
                                     threshold=0.8)
    if protocol == "exact":
        assert_matches_reference(inline, labels, scores)
    else:
        assert inline["AP"] == pytest.approx(smiyc_pixel_metrics(
            np.stack([scores[f] for f in sorted(scores)]), np.stack([labels[f] for f in sorted(labels)]))["AP"],
            abs=1e-12)


def test_cli_evaluation_of_score_files_imports_no_torch(smiyc, tmp_path):
    """`oodseg evaluate` of score files in a fresh interpreter (workers and inline): torch is never imported."""
    root, scores_dir, _, _ = smiyc
    for workers in ("0", "2"):
        code = ("import sys\nfrom oodseg.cli import main\n"
                f"main(['evaluate', '--root', {str(root)!r}, '--scores', {str(scores_dir)!r}, '--workers', '{workers}',"
                " '--json'], standalone_mode=False)\n"
                "print('TORCH', sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OODSEG_QUIET": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout[:proc.stdout.rindex("TORCH")])["AP"] is not None
        assert proc.stdout.strip().splitlines()[-1] == "TORCH []"


def test_cli_workers_negative_is_one_line(smiyc):
    root, scores_dir, _, _ = smiyc
    res = run_cli("--root", root, "--scores", scores_dir, "--workers", "-2")
    assert res.exit_code == 2 and res.output.strip() == "error: --workers: must be >= 0 (0 = inline), got -2"


@pytest.mark.parametrize("kept_frames", [0, 2])
def test_frames_kept_by_pass_1_give_the_numbers_of_frames_read_again(tmp_path, rng, monkeypatch, kept_frames):
    """Pass 2 on the frames pass 1 kept (all of them by default) = pass 2 reading the files again (none or
    some kept: a budget of 0 or 2 frames), inline and in 2 workers."""
    import oodseg.workflows.evaluate as evaluate_module

    root = tmp_path / "obstacle"
    scores_dir, _, _ = make_smiyc(root, rng, n=6)
    dataset = open_dataset("smiyc-obstacle", root)
    kept_all = evaluate_dataset(dataset, scores_dir, track="obstacle", mode="streaming", workers=0)
    frame_bytes = sum(a.nbytes for a in evaluate_module.FrameReader(dataset, scores_dir, False, None, True)(0))
    monkeypatch.setattr(evaluate_module, "KEPT_FRAME_BYTES", kept_frames * frame_bytes)
    for workers in (0, 2):
        assert evaluate_dataset(dataset, scores_dir, track="obstacle", mode="streaming", workers=workers) == kept_all
