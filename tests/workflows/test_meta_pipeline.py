"""`run_meta` and `oodseg meta` end to end on a tiny SMIYC-layout dataset with saved probabilities.

References are independent: detection counts by a loop over skimage components of the
stored float16 score maps (before) and of the filtered maps written by the run (after).
"""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from skimage.measure import label as sk_label
from sklearn.metrics import average_precision_score, roc_auc_score

from oodseg.cli import main
from oodseg.data import open_dataset, write_score
from oodseg.errors import OodsegError
from oodseg.workflows.meta import run_meta
from oodseg.workflows.probabilities import write_probabilities
from oodseg.workflows.probabilities import gradient_map_names, read_probabilities

H, W, C = 40, 56, 4


def softmax(logits):
    e = np.exp(logits - logits.max(0))
    return e / e.sum(0)


def make_dataset(tmp: Path, n=8, seed=0):
    """root/{images,labels_masks}, scores/entropy/<root>/{fid}.hdf5 (entropy), probs/{fid}.npz.

    Anomalies (label 1) are large near-uniform blobs; false alarms are small blobs of moderate
    entropy on the road, so segment features separate them but a threshold does not."""
    rng = np.random.default_rng(seed)
    root = tmp / "anomaly"
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    scores_dir, probs_dir = tmp / "scores" / "entropy" / "anomaly", tmp / "probs"
    for i in range(n):
        fid = f"f{i:02d}"
        label = np.zeros((H, W), np.uint8)
        label[:5] = 255
        logits = np.zeros((C, H, W))
        logits[0] = 6.0
        logits[1, :, W // 2:] = 8.0                       # two in-distribution regions
        for _ in range(rng.integers(1, 3)):              # anomalies: uniform logits
            y, x = rng.integers(8, H - 12), rng.integers(0, W - 12)
            label[y:y + 10, x:x + 10] = 1
            logits[:, y:y + 10, x:x + 10] = rng.normal(0, 0.3, (C, 10, 10))
        for _ in range(rng.integers(2, 5)):              # false alarms: 2x2 blobs, two competing classes
            y, x = rng.integers(6, H - 2), rng.integers(0, W - 2)
            if (label[y:y + 2, x:x + 2] == 0).all():
                logits[:, y:y + 2, x:x + 2] = 0.0
                logits[2, y:y + 2, x:x + 2] = logits[3, y:y + 2, x:x + 2] = rng.uniform(1.5, 3.5)
        logits += rng.normal(0, 0.2, logits.shape)
        probs = softmax(logits).astype(np.float32)
        entropy = -(probs * np.log(probs)).sum(0) / np.log(C)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{fid}.png")
        Image.fromarray(label).save(root / "labels_masks" / f"{fid}_labels_semantic.png")
        write_score(scores_dir / f"{fid}.hdf5", entropy)
        write_probabilities(probs_dir / f"{fid}.npz", probs)
    return root, scores_dir, probs_dir


def read_hdf5(path):
    with h5py.File(path, "r") as f:
        return f["value"][:].astype(np.float32)


def brute_force_counts(score_maps, labels, t):
    tp = fp = fn = road = missed = 0
    for s, y in zip(score_maps, labels):
        pred = (s >= t) & (y != 255)
        comps, gts = sk_label(pred, connectivity=2), sk_label(y == 1, connectivity=2)
        for k in range(1, comps.max() + 1):
            fp += not (y[comps == k] == 1).any()
        for g in range(1, gts.max() + 1):
            hit = pred[gts == g].any()
            tp, fn = tp + hit, fn + (not hit)
        road += (y == 0).sum()
        missed += ((y == 0) & pred).sum()
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else None
    return {"TP": tp, "FP": fp, "FN": fn, "F1": f1, "miss_rate": missed / road}


@pytest.fixture
def tiny(tmp_path):
    return make_dataset(tmp_path)


def test_run_meta_table_filtered_maps_and_schema(tiny, tmp_path):
    root, scores_dir, probs_dir = tiny
    dataset = open_dataset("smiyc-anomaly", root)
    result = run_meta(dataset, probs=probs_dir, scores_dir=scores_dir, segments="entropy:0.5", cv="image-kfold:4",
                      thresholds=(0.3, 0.5, 1.01), filtered_out=tmp_path / "out")
    assert result["schema"] == "oodseg.meta" and result["version"] == 1
    assert result["n_features"] == 5 + 30 + 2 * C + 2 and result["method"] == "entropy"
    assert [row["t"] for row in result["thresholds"]] == [0.3, 0.5, 1.01]
    labels = [np.array(Image.open(root / "labels_masks" / f"{fid}_labels_semantic.png")) for fid in dataset.fids]
    scores = [read_hdf5(scores_dir / f"{fid}.hdf5") for fid in dataset.fids]
    filtered_dir = tmp_path / "out" / "entropy_meta" / "anomaly"
    assert result["filtered"] == str(filtered_dir.resolve())
    filtered = [read_hdf5(filtered_dir / f"{fid}.hdf5") for fid in dataset.fids]
    for row in result["thresholds"]:
        assert row["before"] == pytest.approx(brute_force_counts(scores, labels, row["t"]))
    main_row = result["thresholds"][1]
    assert main_row["after"] == pytest.approx(brute_force_counts(filtered, labels, 0.5))
    # zero segments at 1.01: zeros, no crash
    empty = result["thresholds"][2]
    assert empty["before"]["FP"] == 0 and empty["before"]["TP"] == 0 and empty["classification"]["n_segments"] == 0
    # filtered maps differ from the scores exactly on whole segments at t = 0.5, set below t
    n_removed = 0
    for s, f, y in zip(scores, filtered, labels):
        comps = sk_label((s >= 0.5) & (y != 255), connectivity=2)
        changed = f != s
        assert (f[changed] < 0.5).all() and (comps[changed] > 0).all()
        for k in np.unique(comps[changed]):
            assert changed[comps == k].all()
            n_removed += 1
    assert n_removed > 0
    # the meta classifier finds the false alarms: F1 rises, classification beats the MSP baseline
    assert main_row["after"]["F1"] > main_row["before"]["F1"]
    assert main_row["after"]["FP"] < main_row["before"]["FP"]
    assert result["classification"]["AUROC"] > 0.9
    assert result["regression"]["R2"] is not None
    assert result["lars"] and result["lars"][0][1] == 1
    # the MSP baseline and the segment count, recomputed from the files with skimage + sklearn
    is_fp, mean_msp = [], []
    for fid, s, y in zip(dataset.fids, scores, labels):
        msp = np.load(probs_dir / f"{fid}.npz")["probs"].astype(np.float32).max(0)
        comps = sk_label((s >= 0.5) & (y != 255), connectivity=2)
        for k in range(1, comps.max() + 1):
            is_fp.append(not (y[comps == k] == 1).any())
            mean_msp.append(msp[comps == k].astype(np.float64).mean())
    assert result["n_segments"] == len(is_fp) and result["classification"]["n_false_positive"] == sum(is_fp)
    assert result["classification"]["baseline_AUROC"] == pytest.approx(roc_auc_score(is_fp, mean_msp))
    assert result["classification"]["baseline_AUPRC"] == pytest.approx(average_precision_score(is_fp, mean_msp))
    json.dumps(result, allow_nan=False)  # valid JSON: no NaN


def test_bad_inputs_give_one_line_errors(tiny, tmp_path):
    root, scores_dir, probs_dir = tiny
    dataset = open_dataset("smiyc-anomaly", root)
    small = tmp_path / "small" / "entropy" / "anomaly"
    for fid in dataset.fids:
        write_score(small / f"{fid}.hdf5", np.zeros((H, W - 1), np.float32))
    with pytest.raises(OodsegError, match="differ in size"):
        run_meta(dataset, probs=probs_dir, scores_dir=small)
    bad_probs = tmp_path / "bad_probs"
    for fid in dataset.fids:
        write_probabilities(bad_probs / f"{fid}.npz", np.full((C, H + 2, W), 1 / C, np.float32))
    with pytest.raises(OodsegError, match="probability maps .* differ in size"):
        run_meta(dataset, probs=bad_probs, scores_dir=scores_dir)
    (probs_dir / "f03.npz").write_bytes(b"garbage")
    with pytest.raises(OodsegError, match="f03.npz: unreadable"):
        run_meta(dataset, probs=probs_dir, scores_dir=scores_dir)
    with pytest.raises(OodsegError, match="needs scores_dir"):
        run_meta(dataset, probs=probs_dir)
    with pytest.raises(OodsegError, match="semantic trainId labels"):
        run_meta(dataset, probs=probs_dir, scores_dir=scores_dir, segments="class")
    for bad in ("entropy", "entropy:x", "blobs:0.3"):
        with pytest.raises(OodsegError, match="^segments"):
            run_meta(dataset, probs=probs_dir, scores_dir=scores_dir, segments=bad)
    with pytest.raises(OodsegError, match="^features"):
        run_meta(dataset, probs=probs_dir, scores_dir=scores_dir, features="metaseg,colour")
    with pytest.raises(OodsegError, match="gradient features need a checkpoint"):
        run_meta(dataset, probs=tmp_path / "bad_probs", scores_dir=scores_dir, features="metaseg,gradient")
    with pytest.raises(OodsegError, match="not softmax probabilities"):
        write_probabilities(tmp_path / "x.npz", np.ones((C, 3, 3)))


def test_class_segments_on_cityscapes_with_a_checkpoint(tmp_path):
    """MetaSeg mode with a checkpoint: probs equal the model's softmax; gradient features; class-count check."""
    from oodseg.models import build_model, save_checkpoint
    from training_fixtures import write_tiny_cityscapes

    data = write_tiny_cityscapes(tmp_path / "data", n_train=1, n_val=4, size=(32, 48), outliers=False)
    dataset = open_dataset("cityscapes", data / "cityscapes", split="val")
    torch.manual_seed(0)
    model = build_model("small", num_classes=19)
    ckpt = save_checkpoint(model, tmp_path / "ckpt", "small", {"num_classes": 19})
    result = run_meta(dataset, probs=ckpt, segments="class", features="metaseg,gradient", cv="loo")
    assert result["n_features"] == 75 + 10 * 10 and result["thresholds"] == []
    assert "pgn_onehot_p0.5_mean" in result["feature_names"] and "pgn_uniform_p2_var_rel_in" in result["feature_names"]
    assert len(result["feature_names"]) == result["n_features"]
    assert result["n_segments"] > 0 and result["regression"] is not None
    # the checkpoint source computes the softmax of the bilinearly upsampled logits
    from oodseg.workflows.probabilities import open_probabilities
    source = open_probabilities(ckpt, gradient=True)
    sample = dataset[0]
    probs, maps = source(sample)
    source.close()
    image = torch.tensor(sample.image, dtype=torch.float32).permute(2, 0, 1)[None] / 255
    with torch.no_grad():
        logits = model.eval()(image)
        logits = logits if isinstance(logits, torch.Tensor) else logits["out"]
        ref = torch.softmax(torch.nn.functional.interpolate(logits, size=(32, 48), mode="bilinear",
                                                            align_corners=False), 1)[0].numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    assert sorted(maps) == sorted(gradient_map_names()) and all(m.shape == (32, 48) for m in maps.values())
    # a checkpoint with fewer classes than the labels use
    save_checkpoint(build_model("small", num_classes=3), tmp_path / "c3", "small", {"num_classes": 3})
    with pytest.raises(OodsegError, match="gives 3 classes"):
        run_meta(dataset, probs=tmp_path / "c3", segments="class")


def test_cli_meta_end_to_end_and_evaluate_reads_filtered_maps(tiny, tmp_path):
    root, scores_dir, probs_dir = tiny
    out_json, filtered = tmp_path / "meta.json", tmp_path / "filtered"
    args = ["meta", "--dataset", "smiyc-anomaly", "--root", str(root), "--scores", str(scores_dir),
            "--probs", str(probs_dir), "--segments", "entropy:0.5", "--cv", "image-kfold:3",
            "--thresholds", "0.4,0.5", "--filtered-out", str(filtered), "--save", str(out_json)]
    run = CliRunner().invoke(main, args)
    assert run.exit_code == 0, run.output
    result = json.loads(out_json.read_text())
    assert result["schema"] == "oodseg.meta" and [r["t"] for r in result["thresholds"]] == [0.4, 0.5]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "exists" in again.output and again.output.count("\n") == 1
    evaluated = CliRunner().invoke(main, ["evaluate", "--dataset", "smiyc-anomaly", "--root", str(root),
                                          "--scores", str(filtered / "entropy_meta" / "anomaly"), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    bad = CliRunner().invoke(main, ["meta", "--root", str(root), "--scores", str(scores_dir), "--probs",
                                    str(probs_dir), "--cv", "folds"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --cv")
    assert "Example" in CliRunner().invoke(main, ["meta", "--help"]).output


def test_cli_meta_threshold_from_a_validation_run(tmp_path):
    """--threshold-from: the segments are entropy:t with the validation table's t of best F1 after removal."""
    (tmp_path / "val").mkdir(), (tmp_path / "test").mkdir()
    val_root, val_scores, val_probs = make_dataset(tmp_path / "val", seed=1)
    root, scores_dir, probs_dir = make_dataset(tmp_path / "test", seed=2)
    val_json, test_json = tmp_path / "val.json", tmp_path / "test.json"
    run = CliRunner().invoke(main, ["meta", "--root", str(val_root), "--scores", str(val_scores), "--probs",
                                    str(val_probs), "--cv", "image-kfold:3", "--thresholds", "0.3,0.5,0.7",
                                    "--save", str(val_json)])
    assert run.exit_code == 0, run.output
    best_t, best_f1 = None, -1.0
    for row in sorted(json.loads(val_json.read_text())["thresholds"], key=lambda r: r["t"]):
        if row["after"]["F1"] is not None and row["after"]["F1"] > best_f1:
            best_t, best_f1 = row["t"], row["after"]["F1"]
    run = CliRunner().invoke(main, ["meta", "--root", str(root), "--scores", str(scores_dir), "--probs",
                                    str(probs_dir), "--cv", "image-kfold:3", "--threshold-from", str(val_json),
                                    "--save", str(test_json)])
    assert run.exit_code == 0, run.output
    result = json.loads(test_json.read_text())
    assert result["segments"] == f"entropy:{best_t:g}" and result["root"] == str(root.resolve())
    assert result["segments_threshold_from"]["file"] == str(val_json.resolve())
    assert result["segments_threshold_from"]["F1_after"] == best_f1
    bad = CliRunner().invoke(main, ["meta", "--root", str(root), "--scores", str(scores_dir), "--probs",
                                    str(probs_dir), "--threshold-from", str(tmp_path / "nope.json")])
    assert bad.exit_code == 2 and bad.output.startswith("error: --threshold-from") and bad.output.count("\n") == 1


def test_probability_files_round_trip_as_float16(tmp_path, rng):
    probs = softmax(rng.normal(size=(C, 6, 7))).astype(np.float32)
    write_probabilities(tmp_path / "a.npz", probs)
    with np.load(tmp_path / "a.npz") as npz:
        assert npz.files == ["probs"] and npz["probs"].dtype == np.float16
    np.testing.assert_array_equal(read_probabilities(tmp_path / "a.npz"), probs.astype(np.float16).astype(np.float32))
    with pytest.raises(OodsegError, match="probability file not found"):
        read_probabilities(tmp_path / "missing.npz")
    np.savez(tmp_path / "flat.npz", probs=np.full((6, 7), 0.5))
    with pytest.raises(OodsegError, match=r"flat.npz: expected probabilities of shape \(C, H, W\)"):
        read_probabilities(tmp_path / "flat.npz")


def test_suppress_segments_changes_exactly_the_removed_pixels():
    from oodseg.workflows.meta import suppress_segments

    score = np.array([[0.9, 0.8, 0.1], [0.5, 0.4, 0.35]], np.float32)
    removed = np.array([[True, True, False], [False, False, True]])
    out = suppress_segments(score, removed, 0.3)
    np.testing.assert_array_equal(out[~removed], score[~removed])
    assert (out[removed] == np.float32(0.1)).all()        # the frame minimum, already below t
    high = np.array([[0.9, 0.8], [0.7, 0.6]], np.float32)  # every pixel above t: just below t in float16
    out = suppress_segments(high, np.eye(2, dtype=bool), 0.5)
    assert (out[np.eye(2, dtype=bool)] < 0.5).all() and np.float16(out[0, 0]) < np.float16(0.5)
    assert out[0, 1] == np.float32(0.8) and (score == np.array([[0.9, 0.8, 0.1], [0.5, 0.4, 0.35]], np.float32)).all()


def test_more_folds_than_images_are_clamped_with_a_warning_and_results_state_the_folds_used(tiny, tmp_path):
    root, scores_dir, probs_dir = tiny
    out = tmp_path / "meta.json"
    run = CliRunner().invoke(main, ["meta", "--dataset", "smiyc-anomaly", "--root", str(root), "--scores",
                                    str(scores_dir), "--probs", str(probs_dir), "--segments", "entropy:0.5",
                                    "--thresholds", "0.5", "--cv", "image-kfold:50", "--save", str(out)])
    assert run.exit_code == 0, run.output
    assert run.stderr == ("warning: cv image-kfold:50: only 8 of 8 images have segments at entropy:0.5; "
                          "cross-validated with 8 folds (cv_folds in the results)\n")
    result = json.loads(out.read_text())
    assert result["cv"] == "image-kfold:50" and result["cv_folds"] == 8
    result = run_meta(open_dataset("smiyc-anomaly", root), probs=probs_dir, scores_dir=scores_dir,
                      segments="entropy:0.5", cv="image-kfold:3", thresholds=(0.5, 1.01))
    assert result["cv_folds"] == 3
    assert [row["classification"]["cv_folds"] for row in result["thresholds"]] == [3, None]  # no segments at 1.01


def test_cli_meta_reports_scikit_learn_convergence_once(tiny, monkeypatch):
    import oodseg.meta.models as meta_models
    from sklearn.linear_model import LogisticRegression

    root, scores_dir, probs_dir = tiny
    monkeypatch.setattr(meta_models, "LogisticRegression", lambda max_iter: LogisticRegression(max_iter=1))
    run = CliRunner().invoke(main, ["meta", "--dataset", "smiyc-anomaly", "--root", str(root), "--scores",
                                    str(scores_dir), "--probs", str(probs_dir), "--segments", "entropy:0.5",
                                    "--cv", "image-kfold:3", "--thresholds", "0.4,0.5", "--json"])
    assert run.exit_code == 0, run.output
    assert "ConvergenceWarning" not in run.stderr and "sklearn" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: meta logistic: scikit-learn did not converge ")
