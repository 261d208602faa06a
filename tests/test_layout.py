"""The run-folder layout: the paths oodseg score writes and evaluate/report/demo read, spelled out."""
from pathlib import Path

from oodseg import data, layout


def test_score_run_paths():
    out = Path("/runs/r1")
    assert layout.score_path(out, "entropy", "anomaly", "f1") == Path("/runs/r1/entropy/anomaly/f1.hdf5")
    assert layout.score_path("/runs/r1", "m", "d", "f", ext=".npz") == Path("/runs/r1/m/d/f.npz")
    assert layout.prediction_path(out, "anomaly", "f1") == Path("/runs/r1/_prediction/anomaly/f1.png")
    assert layout.manifest_path(out, "anomaly") == Path("/runs/r1/_manifest/anomaly.json")
    assert layout.predictions_dir(out, "anomaly") == Path("/runs/r1/_prediction/anomaly")
    assert layout.scores_dir(out, "msp", "obstacle") == Path("/runs/r1/msp/obstacle")
    assert layout.run_of("/runs/r1/msp/obstacle") == (out, "obstacle")
    assert layout.result_path("/demo/evaluate", "anomaly", "msp") == Path("/demo/evaluate/anomaly/msp.json")
    assert data.score_path is layout.score_path  # the public name in oodseg.data is the same function
