"""Choices taken on a validation set: ``oodseg evaluate --threshold-from`` (θ = the same method's best-F1
threshold on validation, checked against scikit-learn's PR curve of the validation pixels) and the Meta-OoD
t of ``oodseg meta --threshold-from`` (best F1 after filtering, checked on hand-written tables)."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.metrics import precision_recall_curve

from oodseg.cli import main
from oodseg.data import read_score, write_score
from oodseg.errors import OodsegError
from oodseg.workflows.selection import best_meta_threshold, component_threshold_from, meta_threshold_from

H, W = 40, 56


def _track(root: Path, scores: Path, rng, n: int, shift: float) -> None:
    """SMIYC anomaly layout: a square anomaly per frame, void bottom rows; noisy scores, anomalies ``shift`` higher."""
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        fid = f"frame_{i:02d}"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{fid}.jpg")
        label = np.zeros((H, W), np.uint8)
        y, x = rng.integers(0, H - 20), rng.integers(0, W - 20)
        label[y:y + 18, x:x + 18] = 1
        label[-4:] = 255
        Image.fromarray(label).save(root / "labels_masks" / f"{fid}_labels_semantic.png")
        write_score(scores / f"{fid}.hdf5", (shift * (label == 1) + rng.normal(0, 1, (H, W))).astype(np.float32))


def _invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _sklearn_best_f1_threshold(root: Path, scores: Path) -> float:
    labels, values = [], []
    for path in sorted((root / "labels_masks").glob("*_labels_semantic.png")):
        label = np.asarray(Image.open(path))
        score = read_score(scores / f"{path.name.removesuffix('_labels_semantic.png')}.hdf5")
        labels.append(label[label != 255])
        values.append(score[label != 255].astype(np.float64))
    precision, recall, thresholds = precision_recall_curve(np.concatenate(labels), np.concatenate(values))
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
    return float(thresholds[np.argmax(f1)])


def test_evaluate_threshold_from_takes_the_validation_best_f1_threshold(tmp_path, rng):
    val, test = tmp_path / "anomaly_val", tmp_path / "anomaly"
    _track(val, tmp_path / "scores" / "entropy" / "anomaly_val", rng, 4, shift=2.0)
    _track(test, tmp_path / "scores" / "entropy" / "anomaly", rng, 4, shift=3.0)
    val_json, test_json = tmp_path / "val.json", tmp_path / "test.json"
    assert _invoke("evaluate", "--root", val, "--scores", tmp_path / "scores/entropy/anomaly_val",
                   "--save", val_json).exit_code == 0
    result = _invoke("evaluate", "--root", test, "--scores", tmp_path / "scores/entropy/anomaly",
                     "--threshold-from", val_json, "--save", test_json)
    assert result.exit_code == 0, result.output
    out = json.loads(test_json.read_text())
    theta = _sklearn_best_f1_threshold(val, tmp_path / "scores/entropy/anomaly_val")
    assert out["component_threshold"] == pytest.approx(theta, abs=1e-6)
    assert out["component_threshold"] != pytest.approx(out["best_F1_threshold"], abs=1e-3)  # not the test's own θ
    assert out["component_threshold_from"]["dataset"] == "anomaly_val"
    assert out["component_threshold_from"]["file"] == str(val_json.resolve())
    # the same as giving θ by hand
    by_hand = tmp_path / "by_hand.json"
    assert _invoke("evaluate", "--root", test, "--scores", tmp_path / "scores/entropy/anomaly",
                   "--threshold", repr(out["component_threshold"]), "--save", by_hand).exit_code == 0
    hand = json.loads(by_hand.read_text())
    assert {k: hand[k] for k in ("sIoU", "PPV", "mean_F1")} == {k: out[k] for k in ("sIoU", "PPV", "mean_F1")}

    other_method = _invoke("evaluate", "--root", test, "--scores", tmp_path / "scores/entropy/anomaly",
                           "--method", "msp", "--threshold-from", val_json)
    both = _invoke("evaluate", "--root", test, "--scores", tmp_path / "scores/entropy/anomaly",
                   "--threshold", "0.5", "--threshold-from", val_json)
    not_evaluate = tmp_path / "meta.json"
    not_evaluate.write_text(json.dumps({"schema": "oodseg.meta"}))
    wrong_schema = _invoke("evaluate", "--root", test, "--scores", tmp_path / "scores/entropy/anomaly",
                           "--threshold-from", not_evaluate)
    for bad, message in ((other_method, "method 'entropy', not 'msp'"), (both, "not both"),
                         (wrong_schema, "expected an oodseg.evaluate result")):
        lines = bad.output.strip().splitlines()
        assert bad.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def _row(t, f1):
    return {"t": t, "before": {"F1": 0.1}, "after": {"F1": f1}}


def test_meta_threshold_is_the_best_f1_after_filtering_ties_to_the_smaller_t(tmp_path):
    assert best_meta_threshold([_row(0.1, 0.4), _row(0.2, 0.7), _row(0.3, 0.6)])["t"] == 0.2
    assert best_meta_threshold([_row(0.5, 0.7), _row(0.2, 0.7), _row(0.3, None)])["t"] == 0.2
    with pytest.raises(OodsegError, match="no threshold with a defined F1"):
        best_meta_threshold([_row(0.3, None)])
    path = tmp_path / "val_meta.json"
    path.write_text(json.dumps({"schema": "oodseg.meta", "dataset": "anomaly_val", "method": "entropy",
                                "thresholds": [_row(0.1, 0.2), _row(0.4, 0.9), _row(0.7, 0.3)]}))
    t, provenance = meta_threshold_from(path)
    assert t == 0.4 and provenance["dataset"] == "anomaly_val" and provenance["F1_after"] == 0.9
    path.write_text(json.dumps({"schema": "oodseg.meta", "thresholds": []}))
    with pytest.raises(OodsegError, match="no threshold table"):
        meta_threshold_from(path)
    with pytest.raises(OodsegError, match="file not found"):
        meta_threshold_from(tmp_path / "missing.json")
    with pytest.raises(OodsegError, match="expected an oodseg.evaluate result, found 'oodseg.meta'"):
        component_threshold_from(path, "entropy")
