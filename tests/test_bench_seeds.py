"""benchmarks/demo_seeds.py and benchmarks/ood_training.py end to end on tiny data (2 seeds, a few steps at 64×128):
the mean ± std they write equals numpy's over the per-seed result files, choices are made on the validation
tracks only, and "beats the baseline" follows the one-std interval rule recomputed here."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.slow
def test_demo_seeds_quick_mean_and_std_of_the_per_seed_evaluations(tmp_path):
    demo_seeds = _script("demo_seeds")
    result = demo_seeds.main(["--quick", "--out", str(tmp_path), "--method", "entropy", "--method", "msp"])
    assert {t["dataset"] for t in result["tables"]} == {"anomaly", "obstacle"}
    for table in result["tables"]:
        assert table["seeds"] == [0, 1]
        for row in table["rows"]:
            for key in ("AP", "FPR95", "mean_F1"):
                values = [json.loads((tmp_path / f"seed-{s}" / "evaluate" / table["dataset"] / f"{row['method']}.json")
                                     .read_text())[key] for s in (0, 1)]
                assert row[key]["n"] == 2
                assert row[key]["mean"] == pytest.approx(np.mean(values))
                assert row[key]["std"] == pytest.approx(np.std(values, ddof=1))
    # Meta-OoD per seed with t from anomaly_val; the table's t is the mean of the seeds' t
    ts = [float(json.loads((tmp_path / f"seed-{s}" / "meta" / "anomaly.json").read_text())["segments"].split(":")[1])
          for s in (0, 1)]
    assert result["meta"]["t (chosen on anomaly_val)"]["mean"] == pytest.approx(np.mean(ts))
    text = (tmp_path / "demo_seeds.md").read_text()
    assert "mean ± std over seeds 0, 1" in text and "| entropy |" in text and " ± " in text
    # the seeds' baselines differ (training seeds 0 and 1)
    weights = [(tmp_path / f"seed-{s}" / "train" / "baseline" / "checkpoint" / "model.safetensors").read_bytes()
               for s in (0, 1)]
    assert weights[0] != weights[1]


@pytest.mark.slow
def test_ood_training_quick_selects_on_val_and_reports_the_interval_verdict(tmp_path):
    ood = _script("ood_training")
    result = ood.main(["--quick", "--out", str(tmp_path), "--recipes", "entropy-max", "--seeds", "0,1",
                       "--sweep", "entropy-max.lam=0.1,0.5"])
    assert result["seeds"] == [0, 1] and result["select_on"] == "val"
    results = sorted(p.name for p in (tmp_path / "results").glob("*.json"))
    selection_files = [n for n in results if n.startswith("select-")]
    assert selection_files and all(n.endswith(("__anomaly_val.json", "__obstacle_val.json")) for n in selection_files)
    assert not [n for n in results if not n.startswith("select-") and "_val" in n]  # final numbers: test tracks only
    log = result["selection"]["entropy-max"]
    assert [entry["params"]["lam"] for entry in log] == [0.1, 0.5]
    best = max(log, key=lambda e: (e["anomaly_val_AP"] + e["obstacle_val_AP"]) / 2)  # mIoU rule: tiny models ~0
    assert result["params"]["entropy-max"]["lam"] == best["params"]["lam"]

    def values(name, track, key):
        return [json.loads((tmp_path / "results" / f"s{s}-{name}__entropy__{track}.json").read_text())[key]
                for s in (0, 1)]

    per_column = []
    for track, key, higher in (("anomaly", "AP", True), ("anomaly", "FPR95", False), ("obstacle", "AP", True),
                               ("obstacle", "FPR95", False)):
        base, tuned = np.array(values("baseline", track, key)), np.array(values("entropy-max", track, key))
        bm, bs, tm, ts = base.mean(), base.std(ddof=1), tuned.mean(), tuned.std(ddof=1)
        per_column.append(bool(tm - ts > bm + bs) if higher else bool(tm + ts < bm - bs))
    verdict = result["beats_baseline"]["entropy-max"]
    assert verdict["per_column"] == per_column and verdict["rule"] == "one-std intervals"
    assert verdict["beats"] == (all(per_column) and verdict["val_mIoU_within_2_points"])
    text = (tmp_path / "ood_training.md").read_text()
    assert "### entropy-max over seeds 0, 1" in text and "mean ± std over 2 seeds" in text
