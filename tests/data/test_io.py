"""Score files: SMIYC hdf5 (float32 by default or float16; uncompressed, gzip or lzf), npy, npz; round trips and bad files."""
import h5py
import numpy as np
import pytest
import torch

from oodseg.data import find_score, read_score, score_path, write_score
from oodseg.errors import OodsegError


def test_score_path_layout(tmp_path):
    assert score_path(tmp_path, "entropy", "anomaly", "x1") == tmp_path / "entropy" / "anomaly" / "x1.hdf5"
    assert score_path(tmp_path, "m", "d", "f", ext=".npz").name == "f.npz"


@pytest.mark.parametrize("compression, filters", [(None, (None, False)), ("none", (None, False)),
                                                  ("gzip", ("gzip", True)), ("lzf", ("lzf", True))])
def test_hdf5_round_trip_is_smiyc_format_and_lossless(tmp_path, rng, compression, filters):
    score = rng.normal(size=(13, 17)).astype(np.float32) * 10
    options = {} if compression is None else {"compression": compression}  # None: the default, uncompressed
    path = write_score(score_path(tmp_path, "m", "d", "f"), torch.from_numpy(score), **options)
    with h5py.File(path, "r") as f:          # what the official SMIYC code does
        ds = f["value"]
        assert ds.dtype == np.float32 and (ds.compression, ds.shuffle) == filters and ds.shape == (13, 17)
        stored = ds[:]
    np.testing.assert_array_equal(stored, score)
    back = read_score(path)
    assert back.dtype == np.float32 and back.shape == (13, 17)
    np.testing.assert_array_equal(back, score)
    assert not list(path.parent.glob(".*partial*"))


def test_compressions_differ_only_in_storage(tmp_path, rng):
    """Every compression stores the same values; gzip and lzf shrink a smooth map, none keeps its raw size."""
    yy, xx = np.mgrid[0:64, 0:96]
    score = (np.sin(yy / 9.0) * np.cos(xx / 7.0)).astype(np.float32)
    sizes = {}
    for name in ("none", "gzip", "lzf"):
        path = write_score(tmp_path / f"{name}.hdf5", score, compression=name)
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["value"][:], score)
        sizes[name] = path.stat().st_size
    assert sizes["none"] >= score.nbytes > max(sizes["gzip"], sizes["lzf"])
    with pytest.raises(OodsegError, match="^compression: expected one of none, gzip, lzf, got 'zstd'$"):
        write_score(tmp_path / "bad.hdf5", score, compression="zstd")
    assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("ext", ["hdf5", "npy", "npz"])
def test_float16_storage_rounds_to_nearest(tmp_path, rng, ext):
    score = rng.normal(size=(13, 17)).astype(np.float32) * 10
    path = write_score(tmp_path / f"f.{ext}", score, dtype="float16")
    back = read_score(path)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, score.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(back, score, rtol=2.0 ** -11, atol=0)  # float16: 10-bit mantissa
    with pytest.raises(OodsegError, match="dtype: expected one of float32, float16, got 'float64'"):
        write_score(tmp_path / f"g.{ext}", score, dtype="float64")


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


def test_float16_storage_keeps_float32_when_the_scores_overflow_it(tmp_path):
    small = np.array([[0.5, -65504.0], [3.0, 1.0]], np.float32)
    big = np.array([[1e5, -2.5e6], [3.0, 0.1]], np.float32)
    write_score(tmp_path / "s.hdf5", small, dtype="float16")
    write_score(tmp_path / "b.hdf5", big, dtype="float16")
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


def test_native_read_keeps_the_stored_dtype(tmp_path, rng):
    """The smiyc protocol bins maps in their stored dtype, as the official h5py reader hands them over."""
    values = rng.normal(size=(6, 7))
    with h5py.File(tmp_path / "half.hdf5", "w") as f:
        f["value"] = values.astype(np.float16)
    np.save(tmp_path / "double.npy", values)
    np.save(tmp_path / "ints.npy", np.arange(42).reshape(6, 7))
    half = read_score(tmp_path / "half.hdf5", native=True)
    assert half.dtype == np.float16 and np.array_equal(half, values.astype(np.float16))
    assert read_score(tmp_path / "double.npy", native=True).dtype == np.float64
    assert read_score(tmp_path / "ints.npy", native=True).dtype == np.float32
    assert read_score(tmp_path / "half.hdf5").dtype == np.float32
