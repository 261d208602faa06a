"""The run-folder layout: the paths oodseg score writes and evaluate/report/demo read, spelled out."""
from pathlib import Path

import pytest

from oodseg import data, layout
from oodseg.errors import OodsegError


def test_score_run_paths():
    out = Path("/runs/r1")
    assert layout.score_path(out, "entropy", "anomaly", "f1") == Path("/runs/r1/entropy/anomaly/f1.hdf5")
    assert layout.score_path("/runs/r1", "m", "d", "f", ext=".npz") == Path("/runs/r1/m/d/f.npz")
    assert layout.prediction_path(out, "0123abcd", "anomaly", "f1") == Path("/runs/r1/_prediction/0123abcd/anomaly/f1.png")
    assert layout.predictions_dir(out, "0123abcd", "anomaly") == Path("/runs/r1/_prediction/0123abcd/anomaly")
    assert layout.manifest_path(out, "msp", "anomaly") == Path("/runs/r1/_manifest/anomaly/msp.json")
    assert layout.manifests_dir(out, "anomaly") == Path("/runs/r1/_manifest/anomaly")
    assert layout.legacy_manifest_path(out, "anomaly") == Path("/runs/r1/_manifest/anomaly.json")
    assert layout.legacy_predictions_dir(out, "anomaly") == Path("/runs/r1/_prediction/anomaly")
    assert layout.lock_path(out) == Path("/runs/r1/.oodseg-score.lock")
    assert layout.scores_dir(out, "msp", "obstacle") == Path("/runs/r1/msp/obstacle")
    assert layout.run_of("/runs/r1/msp/obstacle") == (out, "msp", "obstacle")
    assert layout.result_path("/demo/evaluate", "anomaly", "msp") == Path("/demo/evaluate/anomaly/msp.json")
    assert data.score_path is layout.score_path  # the public name in oodseg.data is the same function


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "a\\b", ".hidden", "nul\0byte", "/abs"])
def test_names_that_would_leave_or_nest_the_folder_are_refused(name):
    with pytest.raises(OodsegError, match="^dataset_name ") as info:
        layout.check_name("dataset_name", name)
    assert "\n" not in str(info.value)
    with pytest.raises(OodsegError):
        layout.scores_dir("/runs/r1", "msp", name)
    with pytest.raises(OodsegError):
        layout.scores_dir("/runs/r1", name, "anomaly")


@pytest.mark.parametrize("name", ["anomaly", "pgn[label=uniform,p=0.1]", "LostAndFound-testNoKnown", "a..b", "x."])
def test_ordinary_names_pass(name):
    assert layout.check_name("method", name) == name
