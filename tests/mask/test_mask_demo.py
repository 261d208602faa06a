"""``oodseg demo --family all --quick``: the mask detectors are trained, scored, evaluated and ranked next to the
per-pixel scores; the reported AP of a mask detector agrees with scikit-learn on its written files."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score

from oodseg.cli import main
from oodseg.data import open_dataset, read_score

MASK_LABELS = {"m2f-rba", "m2f-m2a", "m2f-eam", "m2f-msp", "m2f-entropy", "m2f-max_logit", "m2f-energy",
               "m2f-maskomaly", "m2f-rba-tuned"}


@pytest.mark.slow  # trains two tiny networks and scores both tracks twice (~1-3 min on a loaded CPU)
def test_quick_demo_ranks_mask_detectors_next_to_pixel_scores(tmp_path: Path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--quick", "--family", "all", "--out", str(out), "--method", "entropy",
                                       "--frames", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    tables = json.loads((out / "results.json").read_text())["tables"]
    assert {t["dataset"] for t in tables} == {"anomaly", "obstacle"}
    for table in tables:
        assert {row["method"] for row in table["rows"]} == MASK_LABELS | {"entropy"}
    for name in ("mask2former", "mask2former-rba"):
        assert json.loads((out / "train" / name / "train.json").read_text())["architecture"] == "small-mask2former"
    evaluated = json.loads((out / "evaluate" / "anomaly" / "m2f-m2a.json").read_text())
    dataset = open_dataset("smiyc-anomaly", out / "data" / "anomaly")
    values, truth = [], []
    for sample in dataset:
        score = read_score(out / "scores-mask" / "closed" / "m2a" / "anomaly" / f"{sample.fid}.hdf5")
        valid = sample.label != 255
        values.append(score[valid])
        truth.append(sample.label[valid] == 1)
    # the demo evaluates with SMIYC's official protocol (a binned threshold sweep): close to the exact AP
    assert evaluated["protocol"] == "smiyc"
    assert evaluated["AP"] == pytest.approx(average_precision_score(np.concatenate(truth), np.concatenate(values)),
                                            rel=0.02)
    again = CliRunner().invoke(main, ["demo", "--quick", "--family", "all", "--out", str(out), "--method", "entropy",
                                      "--frames", "0"], catch_exceptions=False)  # every step cached: no error
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["tables"] == tables


def test_demo_rejects_an_unknown_family(tmp_path: Path):
    result = CliRunner().invoke(main, ["demo", "--quick", "--family", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output


@pytest.mark.slow  # two seeds of the quick mask family (~2-5 min on a loaded CPU)
def test_mask_seeds_quick_mean_and_std_of_the_per_seed_evaluations(tmp_path):
    benchmarks = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location("bench_mask_seeds", benchmarks / "mask_seeds.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(benchmarks))
    result = module.main(["--quick", "--out", str(tmp_path)])
    for table in result["tables"]:
        assert table["seeds"] == [0, 1] and {row["method"] for row in table["rows"]} == MASK_LABELS
        for row in table["rows"]:
            values = [json.loads((tmp_path / f"seed-{s}" / "evaluate" / table["dataset"] / f"{row['method']}.json")
                                 .read_text())["AP"] for s in (0, 1)]
            assert row["AP"]["mean"] == pytest.approx(np.mean(values))
            assert row["AP"]["std"] == pytest.approx(np.std(values, ddof=1))
