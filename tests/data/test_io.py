"""Score files: SMIYC hdf5 (float16, gzip), npy, npz; round trips and bad files."""
import h5py
import numpy as np
import pytest
import torch

from oodseg.data import find_score, read_score, score_path, write_score
from oodseg.errors import OodsegError


def test_score_path_layout(tmp_path):
    assert score_path(tmp_path, "entropy", "anomaly", "x1") == tmp_path / "entropy" / "anomaly" / "x1.hdf5"
    assert score_path(tmp_path, "m", "d", "f", ext=".npz").name == "f.npz"


def test_hdf5_round_trip_is_smiyc_format(tmp_path, rng):
    score = rng.normal(size=(13, 17)).astype(np.float32) * 10
    path = write_score(score_path(tmp_path, "m", "d", "f"), torch.from_numpy(score))
    with h5py.File(path, "r") as f:          # what the official SMIYC code does
        ds = f["value"]
        assert ds.dtype == np.float16 and ds.compression == "gzip" and ds.shape == (13, 17)
        stored = ds[:]
    np.testing.assert_array_equal(stored, score.astype(np.float16))
    back = read_score(path)
    assert back.dtype == np.float32 and back.shape == (13, 17)
    # float16 has a 10-bit mantissa: relative error <= 2**-11
    np.testing.assert_allclose(back, score, rtol=2.0 ** -11, atol=1e-7)
    assert not list(path.parent.glob(".*partial*"))


@pytest.mark.parametrize("ext", ["npy", "npz"])
def test_numpy_round_trip_exact(tmp_path, rng, ext):
    score = rng.normal(size=(5, 4)).astype(np.float32)
    path = write_score(tmp_path / f"f.{ext}", score)
    np.testing.assert_array_equal(read_score(path), score)
    assert find_score(tmp_path, "f") == path


def test_find_score_prefers_hdf5_and_reports_missing(tmp_path):
    write_score(tmp_path / "a.npy", np.zeros((2, 2)))
    write_score(tmp_path / "a.hdf5", np.ones((2, 2)))
    assert find_score(tmp_path, "a").suffix == ".hdf5"
    with pytest.raises(OodsegError, match=r"b\.hdf5: missing score file for frame b"):
        find_score(tmp_path, "b")


def test_hdf5_keeps_float16_unless_the_scores_overflow_it(tmp_path):
    small = np.array([[0.5, -65504.0], [3.0, 1.0]], np.float32)
    big = np.array([[1e5, -2.5e6], [3.0, 0.1]], np.float32)
    write_score(tmp_path / "s.hdf5", small)
    write_score(tmp_path / "b.hdf5", big)
    with h5py.File(tmp_path / "s.hdf5") as f, h5py.File(tmp_path / "b.hdf5") as g:
        assert f["value"].dtype == np.float16 and g["value"].dtype == np.float32
    assert np.array_equal(read_score(tmp_path / "s.hdf5"), small.astype(np.float16).astype(np.float32))
    assert np.array_equal(read_score(tmp_path / "b.hdf5"), big)


def test_bad_scores_refused_and_nothing_written(tmp_path):
    nan = np.zeros((3, 3), np.float32)
    nan[1, 1] = np.nan
    with pytest.raises(OodsegError, match="NaN or Inf"):
        write_score(tmp_path / "n.hdf5", nan)
    with pytest.raises(OodsegError, match="2-D"):
        write_score(tmp_path / "r.hdf5", np.zeros((1, 3, 3)))
    with pytest.raises(OodsegError, match="unknown score file suffix"):
        write_score(tmp_path / "s.png", np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_read_errors_are_one_line(tmp_path):
    (tmp_path / "c.hdf5").write_bytes(b"garbage, not hdf5")
    (tmp_path / "c.npy").write_bytes(b"\x93NUMPY garbage")
    with h5py.File(tmp_path / "k.hdf5", "w") as f:
        f["other"] = np.zeros((2, 2))
    with h5py.File(tmp_path / "inf.hdf5", "w") as f:
        f["value"] = np.array([[0, np.inf]], np.float16)
    for name, message in [("c.hdf5", "unreadable score file"), ("c.npy", "unreadable score file"),
                          ("k.hdf5", "no dataset 'value'"), ("inf.hdf5", "NaN or Inf"),
                          ("gone.npz", "score file not found")]:
        with pytest.raises(OodsegError) as err:
            read_score(tmp_path / name)
        assert str(err.value).startswith(str(tmp_path / name)) and message in str(err.value)
        assert "\n" not in str(err.value)
