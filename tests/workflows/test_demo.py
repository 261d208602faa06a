"""End to end through the CLI: synth → train → score → evaluate → report, and the demo itself."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from oodseg.cli import main
from oodseg.data import open_dataset, read_score, write_score

EVALUATE_KEYS = {"AP", "AUROC", "FPR95", "best_F1", "best_F1_threshold", "sIoU", "PPV", "mean_F1",
                 "n_frames", "n_pixels"}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_pipeline_on_tiny_synthstreet(tmp_path: Path):
    data, run, scores = tmp_path / "synth", tmp_path / "run", tmp_path / "scores"
    invoke("synth", "--out", data, "--size", "64x128",
           "--frames", "train=6,val=2,anomaly=3,obstacle=2,shifted=1,outliers=3")
    invoke("train", "--recipe", "baseline", "--data", data, "--out", run, "--steps", 3, "--batch-size", 2,
           "--crop-size", 32)
    summary = json.loads((run / "train.json").read_text())
    assert summary["schema"] == "oodseg.train" and summary["steps"] == 3
    assert 0.0 <= summary["val_mIoU"] <= 1.0
    invoke("score", "--checkpoint", run / "checkpoint", "--images", data / "anomaly", "--method", "entropy",
           "--method", "energy", "--out", scores)
    out = tmp_path / "entropy.json"
    invoke("evaluate", "--dataset", "smiyc-anomaly", "--root", data / "anomaly",
           "--scores", scores / "entropy" / "anomaly", "--save", out, "--protocol", "exact")
    result = json.loads(out.read_text())
    assert EVALUATE_KEYS <= set(result)
    for key in ("AP", "AUROC", "FPR95", "best_F1"):
        assert 0.0 <= result[key] <= 1.0, key
    for key in ("sIoU", "PPV", "mean_F1"):
        assert result[key] is None or 0.0 <= result[key] <= 1.0, key
    assert result["n_frames"] == 3 and result["n_pixels"] > 0

    # The pooled AP equals scikit-learn on the written files and the labels.
    dataset = open_dataset("smiyc-anomaly", data / "anomaly")
    scores_all, labels_all = [], []
    for sample in dataset:
        score = read_score(scores / "entropy" / "anomaly" / f"{sample.fid}.hdf5")
        valid = sample.label != 255
        scores_all.append(score[valid])
        labels_all.append(sample.label[valid])
    expected = average_precision_score(np.concatenate(labels_all), np.concatenate(scores_all))
    assert result["AP"] == pytest.approx(expected, abs=1e-6)

    report = tmp_path / "report"
    invoke("report", tmp_path, "--out", report, "--frames", 1)
    assert (report / "index.html").is_file()


def test_quick_demo_writes_results_and_report(tmp_path: Path):
    out = tmp_path / "demo"
    invoke("demo", "--quick", "--out", out, "--method", "entropy", "--method", "msp", "--method", "mahalanobis",
           "--method", "ensemble")
    tables = json.loads((out / "results.json").read_text())["tables"]
    assert {t["dataset"] for t in tables} == {"anomaly", "obstacle"}
    for table in tables:
        assert {row["method"] for row in table["rows"]} == {"entropy", "msp", "mahalanobis", "ensemble"}
        aps = [row["AP"] for row in table["rows"]]
        assert aps == sorted(aps, reverse=True)
    assert "| method |" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().startswith("dataset,method,metric,value")
    assert (out / "report" / "index.html").is_file()
    # Meta-OoD: t chosen on anomaly_val (best F1 after filtering, ties to the smaller t), applied on the test track
    val_meta = json.loads((out / "meta" / "anomaly_val.json").read_text())
    test_meta = json.loads((out / "meta" / "anomaly.json").read_text())
    best_t, best_f1 = None, -1.0
    for row in sorted(val_meta["thresholds"], key=lambda r: r["t"]):
        if row["after"]["F1"] is not None and row["after"]["F1"] > best_f1:
            best_t, best_f1 = row["t"], row["after"]["F1"]
    assert val_meta["dataset"] == "anomaly_val" and test_meta["dataset"] == "anomaly"
    assert test_meta["segments"] == f"entropy:{best_t:g}"
    assert test_meta["segments_threshold_from"]["dataset"] == "anomaly_val"
    # A rerun reuses every cached step and gives the same tables.
    invoke("demo", "--quick", "--out", out, "--method", "entropy", "--method", "msp", "--method", "mahalanobis",
           "--method", "ensemble")
    assert json.loads((out / "results.json").read_text())["tables"] == tables
    # float16 scores cached by an earlier oodseg (manifest without "dtype") are scored again, as float32.
    manifest_file = out / "scores" / "_manifest" / "anomaly" / "msp.json"
    first = sorted((out / "scores" / "msp" / "anomaly").glob("*.hdf5"))[0]
    manifest = json.loads(manifest_file.read_text())
    del manifest["dtype"]
    manifest_file.write_text(json.dumps(manifest))
    write_score(first, read_score(first), dtype="float16")
    invoke("demo", "--quick", "--out", out, "--method", "entropy", "--method", "msp", "--method", "mahalanobis",
           "--method", "ensemble")
    assert json.loads(manifest_file.read_text())["dtype"] == "float32"
    with h5py.File(first, "r") as f:
        assert f["value"].dtype == np.float32
    assert json.loads((out / "results.json").read_text())["tables"] == tables
    # A cached model that no longer loads (another architecture default) stops the rerun in one line.
    meta_path = out / "train" / "baseline" / "checkpoint" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["convs_per_stage"] = 3
    meta_path.write_text(json.dumps(meta))
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(out), "--method", "entropy"])
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert result.exit_code != 0 and len(errors) == 1 and "cached model no longer loads" in errors[0]


def test_demo_rejects_unknown_method(tmp_path: Path):
    result = CliRunner().invoke(main, ["demo", "--quick", "--out", str(tmp_path), "--method", "nope"])
    assert result.exit_code == 2
    assert "nope" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_full_demo(tmp_path: Path):
    """The real `make demo` run: every method on both tracks, a baseline that reaches the issue's
    70 % val mIoU (71.9 % measured, README; the run is deterministic on a given machine)."""
    out = tmp_path / "demo"
    invoke("demo", "--out", out)
    summary = json.loads((out / "train" / "baseline" / "train.json").read_text())
    assert summary["val_mIoU"] >= 0.70
    tables = json.loads((out / "results.json").read_text())["tables"]
    for table in tables:
        assert len(table["rows"]) == 17
    assert (out / "report" / "index.html").is_file()
