"""Segmentation (mIoU, mIoU at t, open-mIoU) and calibration (ECE, AuSE) through `oodseg evaluate`.

A tiny SMIYC-layout tree with semantic labels and a tiny checkpoint are written here; scores come
from `oodseg score`. References are independent: the probabilities from the model's plain forward
pass (softmax of its full-resolution logits), the scores read with h5py, and SPEC §4.3/§4.4
computed with explicit loops (confusion counts per class, ECE bins, sparsification by removing
pixels one at a time with ties averaged).
"""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from oodseg.cli import main
from oodseg.data import open_dataset, write_score
from oodseg.errors import OodsegError
from oodseg.workflows.evaluate_semantic import evaluate_semantic, open_semantic_dataset
from oodseg.workflows.probabilities import write_probabilities
from oodseg.models import build_model, save_checkpoint

H, W, N, K = 32, 48, 3, 19
ARCH = {"widths": [8, 8, 8, 8], "convs_per_stage": 2, "aspp_channels": 8, "low_channels": 8, "decoder_channels": 8}


def tiny_checkpoint(path: Path, num_classes: int = K) -> Path:
    """A random small model whose BN statistics come from random images, so that it predicts many classes
    with spread-out confidences (a freshly initialised one predicts one class everywhere)."""
    torch.manual_seed(1)
    model = build_model("small", num_classes=num_classes, **ARCH)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(2, 3, H, W))
        model.classifier.weight.mul_(3.0)
    return save_checkpoint(model.eval(), path, "small", {"num_classes": num_classes, **ARCH})


def reference_probs(checkpoint: Path, image: np.ndarray) -> np.ndarray:
    """Softmax of the model's own full-resolution output (C, H, W), float64."""
    from oodseg.models import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    x = torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None] / 255.0
    with torch.no_grad():
        return torch.softmax(model(x).double(), dim=1)[0].numpy()


def read_h5(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["value"][:].astype(np.float32)


def semantic_labels(pred: np.ndarray, rng) -> np.ndarray:
    """Labels that mostly agree with the prediction, every class present, an outlier box and void."""
    label = pred.astype(np.uint8).copy()
    flip = rng.random(label.shape) < 0.35
    label[flip] = rng.integers(0, K, flip.sum())
    label.ravel()[:K] = np.arange(K)
    y, x = rng.integers(0, H - 10), rng.integers(0, W - 12)
    label[y:y + 10, x:x + 12] = 254
    label[-2:, :] = 255
    return label


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """SMIYC anomaly tree (OoD + semantic labels), checkpoint, `oodseg score` outputs and references."""
    base = tmp_path_factory.mktemp("sem")
    rng = np.random.default_rng(7)
    root, ckpt, out = base / "anomaly", tiny_checkpoint(base / "ckpt"), base / "scores"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    images = {}
    for i in range(N):
        fid = f"frame_{i}"
        image = (rng.random((H, W, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{fid}.png")
        images[fid] = image
    # float16 files: the streaming states are exact for them (test_saved_probabilities_and_streaming_mode)
    res = CliRunner().invoke(main, ["score", "--checkpoint", str(ckpt), "--images", str(root), "--dataset-kind",
                                    "smiyc-anomaly", "--method", "msp", "--method", "energy", "--out", str(out),
                                    "--dtype", "float16"])
    assert res.exit_code == 0, res.output
    ref = {"probs": {}, "labels": {}, "msp": {}, "energy": {}}
    for fid, image in images.items():
        probs = reference_probs(ckpt, image)
        label = semantic_labels(probs.argmax(0), rng)
        Image.fromarray(label).save(root / "labels_masks" / f"{fid}_labels_trainIds.png")
        ood = np.select([label == 254, label == 255], [1, 255], 0).astype(np.uint8)
        Image.fromarray(ood).save(root / "labels_masks" / f"{fid}_labels_semantic.png")
        ref["probs"][fid], ref["labels"][fid] = probs, label
        for method in ("msp", "energy"):
            ref[method][fid] = read_h5(out / method / "anomaly" / f"{fid}.hdf5")
    return root, ckpt, out, ref


# --- brute-force references (SPEC §4.3, §4.4) ------------------------------------------------

def iou_with_ood(pred, label, ood):
    """Per-class IoU: TP = GT k predicted k (not OoD); FP = predicted k (not OoD), GT valid and ≠ k;
    FN = GT k predicted otherwise (OoD included). Explicit loop over classes."""
    valid = label != 255
    ious = []
    for k in range(K):
        tp = np.sum((label == k) & (pred == k) & ~ood)
        fp = np.sum(valid & (label != k) & (pred == k) & ~ood)
        fn = np.sum((label == k) & ((pred != k) | ood))
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(ious)


def brute_segmentation(probs, labels, scores, thresholds):
    fids = sorted(labels)
    pred = np.concatenate([probs[f].argmax(0).ravel() for f in fids])
    label = np.concatenate([labels[f].ravel().astype(int) for f in fids])
    score = np.concatenate([scores[f].ravel() for f in fids])
    closed = label < K  # closed-set mIoU ignores outliers and void
    iou = iou_with_ood(pred[closed], label[closed], np.zeros(closed.sum(), bool))
    out = {"mIoU": np.nanmean(iou), "IoU_per_class": iou,
           "mIoU_at": [np.nanmean(iou_with_ood(pred, label, score >= t)) for t in thresholds]}
    outlier_scores = score[label == 254]
    for t in sorted(set(score[label != 255]), reverse=True):   # sweep t from high to low
        if np.mean(outlier_scores >= t) >= 0.95:
            out["open_threshold"] = t
            break
    out["open_mIoU"] = np.nanmean(iou_with_ood(pred, label, score >= out["open_threshold"]))
    return out


def brute_calibration(probs, labels, scores, confidence, n_bins=15, n_fractions=100):
    u, correct, brier = [], [], []
    for fid in sorted(labels):
        label = labels[fid]
        for y, x in zip(*np.nonzero(label < K)):   # in-distribution pixels only
            p = probs[fid][:, y, x].astype(np.float64)
            c = int(label[y, x])
            u.append(float(scores[fid][y, x]))
            correct.append(int(np.argmax(p)) == c)
            brier.append(sum((p[j] - (j == c)) ** 2 for j in range(K)))
    u, correct, brier = np.array(u), np.array(correct), np.array(brier)
    conf = 1 - u / u.max() if confidence == "normalised" else 1 - (u - u.min()) / (u.max() - u.min())
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = ((conf > lo) | (b == 0)) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.sum() / u.size * abs(correct[in_bin].mean() - conf[in_bin].mean())

    def curve(key):
        """Mean Brier of the pixels left after removing fractions by decreasing key (tied pixels: their mean)."""
        order = np.argsort(-key, kind="stable")
        values = brier[order].copy()
        keys = key[order]
        start = 0
        for i in range(1, values.size + 1):
            if i == values.size or keys[i] != keys[start]:
                values[start:i] = values[start:i].mean()
                start = i
        removed = np.concatenate([[0.0], np.cumsum(values)])
        left = []
        for f in np.arange(n_fractions) / n_fractions:
            n_removed = f * values.size
            removed_sum = np.interp(n_removed, np.arange(values.size + 1), removed)
            left.append((brier.sum() - removed_sum) / (values.size - n_removed))
        return np.array(left)

    return {"ECE": ece, "AuSE": float(np.mean(curve(u) - curve(brier)))}


def check_against_brute_force(result, ref, method, thresholds, confidence):
    seg = brute_segmentation(ref["probs"], ref["labels"], ref[method], thresholds)
    got = result["segmentation"]
    assert got["mIoU"] == pytest.approx(seg["mIoU"], abs=1e-12)
    np.testing.assert_allclose(np.array(got["IoU_per_class"], dtype=float), seg["IoU_per_class"], atol=1e-12)
    assert [row["t"] for row in got["mIoU_at"]] == pytest.approx(thresholds)
    assert [row["mIoU"] for row in got["mIoU_at"]] == pytest.approx(seg["mIoU_at"], abs=1e-12)
    assert got["open_threshold"] == pytest.approx(seg["open_threshold"], abs=0)
    assert got["open_mIoU"] == pytest.approx(seg["open_mIoU"], abs=1e-12)
    cal = brute_calibration(ref["probs"], ref["labels"], ref[method], confidence)
    assert result["calibration"]["confidence"] == confidence
    assert result["calibration"]["ECE"] == pytest.approx(cal["ECE"], abs=1e-6)
    assert result["calibration"]["AuSE"] == pytest.approx(cal["AuSE"], abs=1e-6)
    # the case is not degenerate: several classes, OoD thresholds that change the mIoU
    assert 0.2 < seg["mIoU"] < 1 and cal["AuSE"] != 0 and cal["ECE"] > 0
    assert all(0 < m < seg["mIoU"] for m in seg["mIoU_at"] + [seg["open_mIoU"]])


def run_cli(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


# --- end to end through the CLI ---------------------------------------------------------------

def test_cli_segmentation_and_calibration_match_brute_force(tree, tmp_path):
    root, ckpt, out, ref = tree
    thresholds = [0.75, 0.85]
    json_out = tmp_path / "results" / "msp.json"
    res = run_cli("--root", root, "--scores", out / "msp" / "anomaly", "--segmentation",
                  "--ood-threshold", 0.75, "--ood-threshold", 0.85, "--save", json_out)
    assert res.exit_code == 0, res.output
    assert "open-mIoU" in res.stdout and "AP" in res.stdout
    result = json.loads(json_out.read_text())
    assert result["schema"] == "oodseg.evaluate" and result["probs"] == str(ckpt.resolve())  # from the manifest
    assert result["AP"] is not None and result["n_frames"] == N       # OoD metrics kept
    assert result["segmentation"]["classes"][0] == "road"
    check_against_brute_force(result, ref, "msp", thresholds, "normalised")
    # the report accepts the file and shows the calibration columns
    from oodseg.report.loading import load_results
    ev = load_results(json_out.parent).evaluations[0]
    assert ev.metrics["ECE"] == pytest.approx(result["calibration"]["ECE"])
    assert ev.metrics["AuSE"] == pytest.approx(result["calibration"]["AuSE"])


def test_negative_scores_use_minmax_confidence(tree):
    root, ckpt, out, ref = tree
    res = run_cli("--root", root, "--scores", out / "energy" / "anomaly", "--probs", ckpt, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["segmentation"]["mIoU_at"] == []
    check_against_brute_force(result, ref, "energy", [], "minmax")
    res = run_cli("--root", root, "--scores", out / "energy" / "anomaly", "--segmentation",
                  "--confidence", "normalised")
    assert res.exit_code == 2 and "uncertainty must be >= 0" in res.stderr


def test_saved_probabilities_and_streaming_mode(tree, tmp_path):
    """`.npz` probabilities (float16) match the brute force; the streaming states stay close to exact."""
    root, ckpt, out, ref = tree
    for fid, probs in ref["probs"].items():
        write_probabilities(tmp_path / "probs" / f"{fid}.npz", probs)
    dataset = open_semantic_dataset("smiyc-anomaly", root)
    saved = {fid: np.load(tmp_path / "probs" / f"{fid}.npz")["probs"].astype(np.float32) for fid in ref["probs"]}
    exact = evaluate_semantic(dataset, out / "msp" / "anomaly", tmp_path / "probs", ood_thresholds=[0.8])
    check_against_brute_force(exact, {**ref, "probs": saved}, "msp", [0.8], "normalised")
    streaming = evaluate_semantic(dataset, out / "msp" / "anomaly", tmp_path / "probs", ood_thresholds=[0.8],
                                  mode="streaming")
    seg, ref_seg = streaming["segmentation"], exact["segmentation"]
    assert seg["mIoU"] == pytest.approx(ref_seg["mIoU"], abs=1e-12)          # the confusion matrix is exact
    # 16-bit score bins (relative width 2**-7): thresholds move at most one bin down, mIoU barely
    assert 0 <= ref_seg["open_threshold"] - seg["open_threshold"] <= ref_seg["open_threshold"] * 2 ** -7
    assert seg["open_mIoU"] == pytest.approx(ref_seg["open_mIoU"], abs=0.02)
    assert seg["mIoU_at"][0]["mIoU"] == pytest.approx(ref_seg["mIoU_at"][0]["mIoU"], abs=0.02)
    # 20-bit bins hold every float16 score apart (ECE exact); the oracle bins float64 Brier scores
    assert streaming["calibration"]["ECE"] == pytest.approx(exact["calibration"]["ECE"], abs=1e-12)
    assert streaming["calibration"]["AuSE"] == pytest.approx(exact["calibration"]["AuSE"], abs=1e-4)


def test_cityscapes_layout_per_city_without_outliers(tmp_path, rng):
    """Semantic-only datasets (Cityscapes layout, e.g. SynthStreet `shifted`): OoD metrics and open-mIoU null."""
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    refs = {"probs": {}, "labels": {}, "msp": {}}
    for city in ("fog", "night"):
        for i in range(2):
            fid = f"{city}_{i:06d}_000019"
            image = (rng.random((H, W, 3)) * 255).astype(np.uint8)
            (tmp_path / "cs" / "leftImg8bit" / "val" / city).mkdir(parents=True, exist_ok=True)
            (tmp_path / "cs" / "gtFine" / "val" / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp_path / "cs" / "leftImg8bit" / "val" / city / f"{fid}_leftImg8bit.png")
            probs = reference_probs(ckpt, image)
            label = semantic_labels(probs.argmax(0), rng)
            label[label == 254] = 3
            Image.fromarray(label).save(tmp_path / "cs" / "gtFine" / "val" / city / f"{fid}_gtFine_labelTrainIds.png")
            score = (1 - probs.max(0)).astype(np.float32)
            write_score(tmp_path / "scores" / "msp" / "cs-val" / f"{fid}.hdf5", score)
            if city == "fog":
                refs["probs"][fid], refs["labels"][fid] = probs, label
                refs["msp"][fid] = read_h5(tmp_path / "scores" / "msp" / "cs-val" / f"{fid}.hdf5")
    res = run_cli("--root", tmp_path / "cs", "-o", "city=fog", "--scores", tmp_path / "scores" / "msp" / "cs-val",
                  "--probs", ckpt, "--ood-threshold", 0.8, "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["dataset"] == "cs-val-fog" and result["n_frames"] == 2 and result["AP"] is None
    seg = result["segmentation"]
    assert seg["open_mIoU"] is None and seg["open_threshold"] is None
    fids = sorted(refs["labels"])
    pred = np.concatenate([refs["probs"][f].argmax(0).ravel() for f in fids])
    label = np.concatenate([refs["labels"][f].ravel().astype(int) for f in fids])
    score = np.concatenate([refs["msp"][f].ravel() for f in fids])
    valid = label != 255
    closed_iou = iou_with_ood(pred[valid], label[valid], np.zeros(valid.sum(), bool))
    assert seg["mIoU"] == pytest.approx(np.nanmean(closed_iou))
    assert seg["mIoU_at"][0]["mIoU"] == pytest.approx(np.nanmean(iou_with_ood(pred, label, score >= 0.8)))
    cal = brute_calibration(refs["probs"], refs["labels"], refs["msp"], "normalised")
    assert result["calibration"]["ECE"] == pytest.approx(cal["ECE"], abs=1e-6)
    assert result["calibration"]["AuSE"] == pytest.approx(cal["AuSE"], abs=1e-6)


def test_streethazards_thirteen_classes_anomaly_as_outlier(tmp_path, rng):
    """StreetHazards semantic view: annotations class+1 → 0..12, anomaly (14) → 254; needs a 13-class model."""
    ckpt13 = tiny_checkpoint(tmp_path / "ckpt13", num_classes=13)
    image = (rng.random((H, W, 3)) * 255).astype(np.uint8)
    raw = rng.integers(1, 14, (H, W)).astype(np.uint8)
    raw[4:14, 6:20] = 14
    for folder, array in (("images", image), ("annotations", raw)):
        (tmp_path / "sh" / "test" / folder / "t1").mkdir(parents=True)
        Image.fromarray(array).save(tmp_path / "sh" / "test" / folder / "t1" / "000.png")
    score = np.where(raw == 14, 2.0, 0.0).astype(np.float32) + rng.random((H, W)).astype(np.float32)
    write_score(tmp_path / "scores" / "energy" / "sh-test" / "t1_000.hdf5", score)
    res = run_cli("--root", tmp_path / "sh", "--scores", tmp_path / "scores" / "energy" / "sh-test",
                  "--probs", ckpt13, "--aggregate", "per_image", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["AP"] is not None and len(result["segmentation"]["IoU_per_class"]) == 13
    stored = read_h5(tmp_path / "scores" / "energy" / "sh-test" / "t1_000.hdf5")
    t_open = np.sort(stored[raw == 14])[::-1][int(np.ceil(0.95 * (raw == 14).sum())) - 1]
    assert result["segmentation"]["open_threshold"] == pytest.approx(float(t_open), abs=0)
    res = run_cli("--root", tmp_path / "sh", "--scores", tmp_path / "scores" / "energy" / "sh-test",
                  "--probs", tiny_checkpoint(tmp_path / "ckpt19"), "--segmentation")
    assert res.exit_code == 2 and "checkpoint has 19 classes but the labels of sh-test (streethazards) are " \
        "trainIds 0..12" in res.stderr


# --- bad input ----------------------------------------------------------------------------------

def _other_class_count(root, ckpt, out, tmp):
    (out / "_manifest" / "anomaly" / "msp.json").unlink()
    return ["--probs", tiny_checkpoint(tmp / "ckpt13", num_classes=13)], \
        "checkpoint has 13 classes but the labels of anomaly (smiyc-anomaly) are trainIds 0..18"


def _other_class_count_than_scores(root, ckpt, out, tmp):
    return ["--probs", tiny_checkpoint(tmp / "ckpt13", num_classes=13)], \
        "its 13 classes differ from the 19 classes of the checkpoint that wrote the scores"


def _no_probabilities(root, ckpt, out, tmp):
    (out / "_manifest" / "anomaly" / "msp.json").rename(tmp / "manifest.json")
    return [], "no probabilities: pass --probs"


def _manifest_checkpoint_gone(root, ckpt, out, tmp):
    manifest = json.loads((out / "_manifest" / "anomaly" / "msp.json").read_text())
    manifest["checkpoint"] = str(tmp / "deleted")
    (out / "_manifest" / "anomaly" / "msp.json").write_text(json.dumps(manifest))
    return [], f"checkpoint {tmp / 'deleted'} does not exist"


def _missing_probability_file(root, ckpt, out, tmp):
    (tmp / "probs").mkdir()
    write_probabilities(tmp / "probs" / "frame_0.npz", np.full((K, H, W), 1 / K, np.float32))
    return ["--probs", tmp / "probs"], "frame_1.npz: probability file not found"


def _unknown_label_value(root, ckpt, out, tmp):
    path = root / "labels_masks" / "frame_1_labels_trainIds.png"
    label = np.asarray(Image.open(path)).copy()
    label[3, 3] = 100
    Image.fromarray(label).save(path)
    return [], "frame_1_labels_trainIds.png: label value 100 is not in the trainIds with outliers encoding"


def _missing_semantic_label(root, ckpt, out, tmp):
    (root / "labels_masks" / "frame_2_labels_trainIds.png").unlink()
    return [], "frame_2_labels_trainIds.png: missing label for image"


def _score_size(root, ckpt, out, tmp):
    write_score(out / "msp" / "anomaly" / "frame_0.hdf5", np.zeros((H // 2, W), np.float32))
    return [], "frame_0.hdf5: score size (16, 48) differs from label size (32, 48)"


def _probability_size(root, ckpt, out, tmp):
    for i in range(N):
        write_probabilities(tmp / "probs" / f"frame_{i}.npz", np.full((K, H, W + 2), 1 / K, np.float32))
    return ["--probs", tmp / "probs"], "probabilities of size (32, 50) differ from label size (32, 48)"


def _ood_target(root, ckpt, out, tmp):
    return ["-o", "target=ood"], "target=ood: segmentation metrics need target=semantic"


@pytest.mark.parametrize("break_input", [_other_class_count, _other_class_count_than_scores, _no_probabilities,
                                         _manifest_checkpoint_gone,
                                         _missing_probability_file, _unknown_label_value, _missing_semantic_label,
                                         _score_size, _probability_size, _ood_target])
def test_bad_input_one_line_error_nothing_written(tree, tmp_path, break_input):
    root0, ckpt, out0, _ = tree
    root, out = tmp_path / "anomaly", tmp_path / "scores"
    shutil.copytree(root0, root)
    shutil.copytree(out0, out)
    extra, expected = break_input(root, ckpt, out, tmp_path)
    json_out = tmp_path / "eval.json"
    res = run_cli("--root", root, "--scores", out / "msp" / "anomaly", "--segmentation", *extra, "--save", json_out)
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and expected in res.stderr, res.stderr
    assert not json_out.exists() and not list(tmp_path.glob(".eval.json*"))


def test_manifest_classes_differ_from_given_checkpoint(tree, tmp_path):
    root, ckpt, out, _ = tree
    other = tiny_checkpoint(tmp_path / "renamed")
    meta = json.loads((other / "model.json").read_text())
    meta["classes"] = [f"c{i}" for i in range(K)]
    (other / "model.json").write_text(json.dumps(meta))
    with pytest.raises(OodsegError, match="classes differ from the 19 classes of the checkpoint that wrote the scores"):
        evaluate_semantic(open_semantic_dataset("smiyc-anomaly", root), out / "msp" / "anomaly", other)


def test_library_argument_errors(tree):
    root, ckpt, out, _ = tree
    with pytest.raises(OodsegError, match="has OoD labels 0/1/255; segmentation metrics need semantic"):
        open_semantic_dataset("folder", root, images="images", masks="labels_masks", mask_suffix="_labels_semantic")
    dataset = open_semantic_dataset("smiyc-anomaly", root)
    with pytest.raises(OodsegError, match="has no semantic labels"):
        evaluate_semantic(open_dataset("smiyc-anomaly", root), out / "msp" / "anomaly", ckpt)
    with pytest.raises(OodsegError, match="confidence: expected one of"):
        evaluate_semantic(dataset, out / "msp" / "anomaly", ckpt, confidence="bad")
    with pytest.raises(OodsegError, match="must be finite"):
        evaluate_semantic(dataset, out / "msp" / "anomaly", ckpt, ood_thresholds=[float("nan")])
    with pytest.raises(OodsegError, match="scores folder not found"):
        evaluate_semantic(dataset, out / "nope" / "anomaly", ckpt)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tree, tmp_path, run_oodseg):
    """2 gloo processes (frames sharded by rank, metric states all-reduced) give the single-process numbers."""
    root, ckpt, out, _ = tree
    base = ["evaluate", "--root", root, "--scores", out / "msp" / "anomaly", "--segmentation",
            "--ood-threshold", "0.8"]
    run_oodseg(*base, "--save", tmp_path / "one.json")
    run_oodseg(*base, "--save", tmp_path / "two.json", nproc=2)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["n_frames"] == one["n_frames"] == N
    for block, keys in (("segmentation", ("mIoU", "open_mIoU", "open_threshold", "IoU_per_class")),
                        ("calibration", ("ECE", "AuSE"))):
        for key in keys:
            assert two[block][key] == pytest.approx(one[block][key], abs=1e-12), key
    assert two["segmentation"]["mIoU_at"][0]["mIoU"] == pytest.approx(one["segmentation"]["mIoU_at"][0]["mIoU"])
