"""Score files: SMIYC-compatible HDF5 (dataset ``value``; uncompressed, gzip or lzf), ``.npy`` and ``.npz``.

Layout: ``{out}/{method}/{dataset}/{fid}.hdf5`` — what the official SegmentMeIfYouCan
code reads with ``h5py.File(path)["value"][:]``. Maps are stored as float32 by default, so
a file evaluates exactly like the in-memory map (SPEC §7); ``dtype="float16"`` halves the size
for benchmark submissions but merges nearby scores (see :mod:`oodseg.metrics.quantization`).
Writes are atomic; reads check shape and finiteness.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from oodseg.atomic import atomic_path, write_bytes
from oodseg.errors import OodsegError, check_choice

HDF5_SUFFIXES = (".hdf5", ".h5")
#: Suffixes :func:`find_score` tries, in this order.
SCORE_SUFFIXES = (".hdf5", ".h5", ".npy", ".npz")
#: Storage precisions of :func:`write_score`; the first is the default.
STORAGE_DTYPES = ("float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: HDF5 storage of written maps by name (:func:`write_score`'s ``compression``), the first the default, chosen
#: by measurement (docs/performance.md, ``benchmarks/pipeline.py``): float32 scores have noisy low mantissa
#: bits, so gzip (level 1 after HDF5's byte shuffle, the fastest level for its size) saves only ~19 % of the
#: bytes and lzf ~14 %, for 10-70x the time of an uncompressed write (and slower reads). Every one is read
#: by h5py, the official SMIYC reader (lzf is h5py's own filter; gzip and shuffle are in every HDF5 library).
COMPRESSIONS = {"none": {}, "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
                "lzf": {"compression": "lzf", "shuffle": True}}


def _as_score_array(array, path: Path, native: bool = False) -> np.ndarray:
    """``array`` as a checked score map: real numbers, 2-D, finite, within the float32 range; float32
    unless ``native`` keeps a float16/32/64 map as stored."""
    if hasattr(array, "detach"):  # torch tensor, any device
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        what = {"c": "complex numbers", "S": "strings", "U": "strings", "O": "objects (e.g. strings)"}.get(
            array.dtype.kind, f"values of type {array.dtype}")
        raise OodsegError(f"{path}: score map holds {what}; expected real numbers")
    if array.ndim != 2:
        raise OodsegError(f"{path}: a score map must be 2-D (H, W), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise OodsegError(f"{path}: score map contains NaN or Inf")
    largest = float(np.abs(array).max()) if array.size else 0.0
    if largest > _FLOAT32_MAX:
        raise OodsegError(f"{path}: score map holds values up to {largest:.3g}, beyond the float32 range "
                          f"(±{_FLOAT32_MAX:.3g}); rescale the scores")
    if not (native and array.dtype in (np.float16, np.float32, np.float64)):
        array = array.astype(np.float32)
    return array


def storage_dtype(array: np.ndarray, dtype: str) -> type:
    """The numpy type a map is stored as: float32, or float16 when asked for and every |x| ≤ 65504 fits it."""
    check_choice("dtype", dtype, STORAGE_DTYPES)
    fits_float16 = not array.size or float(np.abs(array).max()) <= _FLOAT16_MAX
    return np.float16 if dtype == "float16" and fits_float16 else np.float32


def write_score(path: str | os.PathLike, array, dtype: str = "float32", compression: str = "none") -> Path:
    """Write a score map ``(H, W)`` (numpy or torch) atomically; the suffix picks the format.

    ``.hdf5``/``.h5``: dataset ``value``, stored as ``compression`` says (:data:`COMPRESSIONS`: ``none``,
    the default, ``gzip`` or ``lzf``). ``.npy``: plain. ``.npz``: compressed, array ``value``.
    ``dtype``: ``"float32"`` (default, lossless for float32 maps) or ``"float16"`` (half the size;
    a map with some |x| > 65504 is still stored as float32 rather than overflow). The official
    SMIYC reader accepts both. hdf5 files are built in memory (:func:`hdf5_image`); a full disk
    raises ``OSError`` and leaves no file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SCORE_SUFFIXES:
        raise OodsegError(f"{path}: unknown score file suffix (use {', '.join(SCORE_SUFFIXES)})")
    check_choice("compression", compression, COMPRESSIONS)
    array = _as_score_array(array, path)
    array = array.astype(storage_dtype(array, dtype), copy=False)
    if suffix in HDF5_SUFFIXES:
        write_bytes(path, hdf5_image(array, compression))
        return path
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, array)
        else:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, value=array)
    return path


def hdf5_image(array: np.ndarray, compression: str = "none") -> bytes:
    """The bytes of an SMIYC hdf5 file holding ``array`` as dataset ``value``, stored as ``compression``
    says (:data:`COMPRESSIONS`).

    Built in memory (HDF5 core driver, no backing file): HDF5 never writes to disk, so a full
    disk fails in plain Python I/O (:func:`oodseg.atomic.write_bytes`) instead of inside the
    library; the bytes equal those of a file HDF5 writes itself, and are the same on every call.
    """
    with h5py.File(f"oodseg-{uuid.uuid4().hex}.hdf5", "w", driver="core", backing_store=False) as f:
        f.create_dataset("value", data=array, **COMPRESSIONS[check_choice("compression", compression, COMPRESSIONS)])
        f.flush()
        return f.id.get_file_image()


def read_score(path: str | os.PathLike, native: bool = False) -> np.ndarray:
    """Read a score map as float32 ``(H, W)`` from ``.hdf5``/``.h5``/``.npy``/``.npz``.

    ``native``: keep a float16/float32/float64 map in its stored dtype (what the official SMIYC
    reader hands its metrics; the ``smiyc`` protocol needs it).
    Missing, corrupt, non-2-D or non-finite files raise a one-line OodsegError naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SCORE_SUFFIXES:
        raise OodsegError(f"{path}: unknown score file suffix (use {', '.join(SCORE_SUFFIXES)})")
    if not path.is_file():
        raise OodsegError(f"{path}: score file not found")
    try:
        if suffix in HDF5_SUFFIXES:
            with h5py.File(path, "r") as f:
                if not isinstance(f.get("value"), h5py.Dataset):
                    found = "a group" if "value" in f else "nothing"
                    raise OodsegError(f"{path}: no dataset 'value' in the HDF5 file ('value' is {found})")
                array = f["value"][()]
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                if "value" not in npz.files:
                    raise OodsegError(f"{path}: no array 'value' in the .npz file")
                array = npz["value"]
    except OodsegError:
        raise
    except Exception as exc:  # h5py/numpy raise many types on corrupt files
        message = str(exc).splitlines()[0] if str(exc) else "corrupt"
        raise OodsegError(f"{path}: unreadable score file ({type(exc).__name__}: {message})") from None
    return _as_score_array(array, path, native)


def find_score(scores_dir: str | os.PathLike, fid: str) -> Path:
    """The score file of frame ``fid`` in ``scores_dir`` (first of ``.hdf5 .h5 .npy .npz``)."""
    scores_dir = Path(scores_dir)
    for suffix in SCORE_SUFFIXES:
        candidate = scores_dir / f"{fid}{suffix}"
        if candidate.is_file():
            return candidate
    raise OodsegError(f"{scores_dir / (fid + '.hdf5')}: missing score file for frame {fid}")
