"""Import the seed papers' published PyTorch checkpoints (SPEC §8) as oodseg checkpoints.

A published file (NVIDIA ``cityscapes_best.pth``, Meta-OoD's entropy-trained file, the SMIYC
baseline, RPL ``res.pth`` / ``rev3.pth``, DenseHybrid's WRN38-TH and LDN-121 weights) is read with
``torch.load(weights_only=True)`` and the smallest allow-list of globals those files need (numpy
scalars and their dtype, under numpy-1 and numpy-2 module names), memory-mapped when it is in zip
format. Its state dict is unwrapped (``state_dict`` / ``model`` / ``model_state``), the NVIDIA loss
weight ``module.criterion.nll_loss.weight`` is dropped, ``module.`` (RPL: also ``branch1.``) is
stripped, absent BatchNorm ``num_batches_tracked`` counters are filled with 0, and the result is
loaded **strictly** into the architecture built on the meta device (``assign=True``: the loaded
tensors become the parameters, nothing is copied). Any mismatch is a one-line
:class:`~oodseg.errors.OodsegError`.

>>> from oodseg.models.importing import import_checkpoint
>>> summary = import_checkpoint("cityscapes_best.pth", "ckpt/nvidia", fmt="auto")
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from oodseg.atomic import atomic_directory
from oodseg.errors import OodsegError
from oodseg.models.checkpoint import check_state_dict, save_checkpoint
from oodseg.models.registry import build_model
from oodseg.progress import track

try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _numpy_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _numpy_scalar

#: Globals the published files need beyond tensors and plain Python values: NVIDIA's ``mean_iu``
#: and RPL's optimizer ``lr`` are ``numpy.float64`` scalars, pickled as ``scalar(dtype, bytes)``;
#: files written under numpy 1 name the function ``numpy.core.multiarray.scalar``.
SAFE_GLOBALS: tuple = (
    (_numpy_scalar, "numpy.core.multiarray.scalar"),
    (_numpy_scalar, "numpy._core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
)

#: The wrapper keys a published file may keep its state dict under, in the order tried.
STATE_KEYS = ("state_dict", "model", "model_state")
#: Keys of the NVIDIA training loss stored with the network; not part of the model.
DROPPED_KEYS = frozenset({"module.criterion.nll_loss.weight", "criterion.nll_loss.weight"})
_DATA_PARALLEL = "module."
_HASH_CHUNK = 16 << 20


@dataclass(frozen=True)
class SeedFormat:
    """How one family of published files maps onto an oodseg architecture, and how its source ran it.

    ``prefix``: stripped from every key after an optional ``module.``; ``normalised_by``: where the
    source applied the ImageNet mean/std (``"data pipeline"``, ``"the model"``, ``"nothing"``; the
    oodseg network applies its own ``conventions()["normalization"]`` inside ``forward``);
    ``score``: the paper's test-time score on this network.
    """

    name: str
    architecture: str
    published_file: str
    paper: str
    url: str
    normalised_by: str
    score: str
    params: Mapping[str, Any] = field(default_factory=dict)
    prefix: str = ""


_NVIDIA = "NVIDIA semantic-segmentation, sdcnet branch (Zhu et al., CVPR 2019)"
_RPL = "RPL: Residual Pattern Learning (Liu et al., ICCV 2023)"
_DENSEHYBRID = "DenseHybrid (Grcic, Bevandic, Segvic, ECCV 2022)"
_RPL_SCORE = "energy of the residual logits, then a 7x7 Gaussian blur (sigma 1, reflect padding)"
_DENSEHYBRID_SCORE = "-logsumexp(logits) + log softmax(logits_ood)[1]"

FORMATS: dict[str, SeedFormat] = {f.name: f for f in (
    SeedFormat("nvidia-wrn38", "deepwv3plus", "cityscapes_best.pth (cv2 split, SDC augmentation) or "
               "cityscapes_cv0_wideresnet38_nosdcaug.pth", _NVIDIA,
               "https://github.com/NVIDIA/semantic-segmentation/tree/sdcnet", "data pipeline",
               "none (a segmentation network; PGN and the post-hoc scores run on it)"),
    SeedFormat("meta-ood", "deepwv3plus", "DeepLabV3+_WideResNet38_epoch_4_alpha_0.9.pth",
               "Meta-OoD: entropy maximisation (Chan, Rottmann, Gottschalk, ICCV 2021)",
               "https://github.com/robin-chan/meta-ood", "data pipeline",
               "entropy of the full-resolution softmax / log(C)"),
    SeedFormat("smiyc-baseline", "deepwv3plus", "DeepLabV3+_WideResNet38_baseline.pth",
               "SegmentMeIfYouCan baselines (Chan et al., NeurIPS 2021 Datasets and Benchmarks)",
               "https://github.com/SegmentMeIfYouCan/road-anomaly-benchmark", "data pipeline",
               "MSP; ODIN (T=3, eps=1e-4); Mahalanobis on the input of final.6"),
    SeedFormat("rpl", "deepwv3plus-rpl", "res.pth", _RPL, "https://github.com/yyliu01/RPL", "data pipeline",
               _RPL_SCORE, params={"projector": False}, prefix="branch1."),
    SeedFormat("rpl-corocl", "deepwv3plus-rpl", "rev3.pth", _RPL + " with CoroCL", "https://github.com/yyliu01/RPL",
               "data pipeline", _RPL_SCORE, params={"projector": True}, prefix="branch1."),
    SeedFormat("densehybrid-wrn38th", "deepwv3plus-th", "DeepLabV3+ fine-tuned for Fishyscapes "
               "(Drive id 1MZhINlNrXQlEyByUxypBebZQECqWAhlL)", _DENSEHYBRID,
               "https://github.com/matejgrcic/DenseHybrid", "the model", _DENSEHYBRID_SCORE),
    SeedFormat("densehybrid-ldn121", "ldn121", "LDN-121 SMIYC submission (Drive id "
               "1bXzZ5B6YGqVKEKcFgcDbMHj5sHYSsjss)", _DENSEHYBRID, "https://github.com/matejgrcic/DenseHybrid",
               "nothing", _DENSEHYBRID_SCORE),
)}
#: The formats whose files hold the plain DeepWV3Plus; they differ only in their source.
_WRN38_FORMATS = ("nvidia-wrn38", "meta-ood", "smiyc-baseline")


def available_formats() -> list[str]:
    """Names accepted by ``import_checkpoint(fmt=...)`` besides ``"auto"``."""
    return sorted(FORMATS)


def file_sha256(path: Path, progress: bool = True) -> str:
    """Hex SHA-256 of ``path``, read in 16 MiB chunks (a progress bar when ``progress``)."""
    digest = hashlib.sha256()
    chunks = -(-path.stat().st_size // _HASH_CHUNK)
    with open(path, "rb") as handle:
        blocks = iter(lambda: handle.read(_HASH_CHUNK), b"")
        for block in (track(blocks, f"sha256 {path.name}", total=chunks) if progress else blocks):
            digest.update(block)
    return digest.hexdigest()


def read_torch_file(path: Path) -> Any:
    """The unpickled object of a ``torch.save`` file, read with ``weights_only=True`` and :data:`SAFE_GLOBALS`.

    Zip-format files are memory-mapped (tensors are paged in when used), legacy ones are read
    onto the CPU. A global outside the allow-list is refused before anything in the file runs.
    """
    is_zip = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise OodsegError(f"{path}: refused to unpickle: it needs global {found.group(1)}, which the weights-only "
                              f"loader does not allow (the published checkpoints need only tensors and numpy "
                              f"scalars)") from exc
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        raise OodsegError(f"{path}: not a readable torch checkpoint, or one holding objects the weights-only loader "
                          f"refuses ({detail.group(1).strip() if detail else _first_line(exc)})") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise OodsegError(f"{path}: not a readable torch checkpoint ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def unwrap_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state dict, top-level keys)``: ``obj`` itself when it is a bare state dict, else ``obj[k]`` for
    the first ``k`` of :data:`STATE_KEYS` present."""
    if not isinstance(obj, Mapping):
        raise OodsegError(f"{path}: holds a {type(obj).__name__}, not a dict")
    top_keys = [str(k) for k in obj]
    state = obj
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        wrapper = next((k for k in STATE_KEYS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            raise OodsegError(f"{path}: no state dict found (top-level keys {top_keys[:8]}; expected a bare state "
                              f"dict or one under {', '.join(repr(k) for k in STATE_KEYS)})")
        state = obj[wrapper]
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise OodsegError(f"{path}: state dict entry {bad!r} is a {type(state[bad]).__name__}, not a tensor")
    return dict(state), top_keys


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix):] if prefix and key.startswith(prefix) else key


def detect_format(state: Mapping[str, torch.Tensor], top_keys: list[str], path: Path) -> str:
    """The format name the keys make unambiguous; a one-line error naming the deciding keys otherwise."""
    keys = {_strip(k, _DATA_PARALLEL) for k in state}
    if "branch1.residual_block.proj_head.proj.0.weight" in keys:
        return "rpl-corocl"
    if any(k.startswith("branch1.residual_block.") for k in keys):
        return "rpl"
    if "backbone.features.conv0.weight" in keys and "logits.conv.weight" in keys:
        return "densehybrid-ldn121"
    if "mod1.conv1.weight" not in keys:
        raise OodsegError(f"{path}: no known format has these keys (first: {', '.join(sorted(keys)[:3])}); "
                          f"formats: {', '.join(available_formats())}")
    if "logits_ood.conv.weight" in keys:
        return "densehybrid-wrn38th"
    if DROPPED_KEYS & set(state) or {"mean_iu", "command"} & set(top_keys):
        return "nvidia-wrn38"
    if {"optimizer_state_dict", "loss"} & set(top_keys):
        return "meta-ood"
    raise OodsegError(f"{path}: ambiguous: the DeepWV3Plus keys fit {', '.join(_WRN38_FORMATS)} and the top-level "
                      f"keys {top_keys[:6]} name none of 'mean_iu'/'command'/criterion (NVIDIA) or "
                      f"'optimizer_state_dict'/'loss' (Meta-OoD); pass --format")


def remap_state_dict(state: Mapping[str, torch.Tensor], fmt: SeedFormat) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(state dict with oodseg key names, dropped keys)``: drops the NVIDIA loss weight, strips a
    ``module.`` present on every key, then ``fmt.prefix`` (a key without it stays, and fails the strict load)."""
    dropped = sorted(DROPPED_KEYS & set(state))
    kept = strip_data_parallel({k: v for k, v in state.items() if k not in DROPPED_KEYS})
    return {_strip(k, fmt.prefix): v for k, v in kept.items()}, dropped


def strip_data_parallel(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the ``module.`` prefix (``DataParallel`` / DDP) when every key has it."""
    if state and all(k.startswith(_DATA_PARALLEL) for k in state):
        return {_strip(k, _DATA_PARALLEL): v for k, v in state.items()}
    return dict(state)


def fill_batch_counters(state: dict[str, torch.Tensor], model: nn.Module) -> int:
    """Add the BatchNorm ``num_batches_tracked`` counters ``model`` has and ``state`` lacks (as 0, as old
    files omit them); returns how many were added."""
    expected = model.state_dict()
    absent = [k for k in expected if k.endswith("num_batches_tracked") and k not in state]
    for key in absent:
        state[key] = torch.zeros((), dtype=expected[key].dtype)
    return len(absent)


def load_strict(fmt: SeedFormat, state: dict[str, torch.Tensor], num_classes: int, path: Path) -> tuple[nn.Module, int]:
    """``(model, number of num_batches_tracked filled)``: the architecture built on the meta device with
    ``state`` assigned as its parameters and buffers (strict; absent BatchNorm counters become 0)."""
    with torch.device("meta"):
        model = build_model(fmt.architecture, num_classes=num_classes, **fmt.params)
    classifier = f"{model.head_name}.weight"
    weight = state.get(classifier)
    if weight is not None and weight.dim() > 0 and weight.shape[0] != num_classes:
        raise OodsegError(f"{path}: checkpoint has {weight.shape[0]} classes ({classifier} {tuple(weight.shape)}), "
                          f"--num-classes says {num_classes}")
    filled = fill_batch_counters(state, model)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True, assign=True)
    return model, filled


def import_checkpoint(path: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto", num_classes: int = 19,
                      overwrite: bool = False, progress: bool = True,
                      log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Import the published file ``path`` in format ``fmt`` (or ``"auto"``) into the oodseg checkpoint ``out``.

    ``model.json`` records ``source`` (the file's name, bytes, sha256 and format, the paper and URL,
    where the source normalised its input, the paper's score) and the network's ``conventions()``
    (normalisation, upsampling ``align_corners``, output stride, classifier head). Nothing is written
    on error; an existing ``out`` is replaced only with ``overwrite``. Returns a JSON-ready summary.
    """
    path, out = Path(path), Path(out)
    log = log or (lambda message: None)
    if fmt != "auto" and fmt not in FORMATS:
        raise OodsegError(f"fmt: unknown format {fmt!r}; choose auto or one of {', '.join(available_formats())}")
    if not path.is_file():
        raise OodsegError(f"{path}: no such file")
    if out.exists() and not overwrite:
        raise OodsegError(f"{out}: already exists; pass --overwrite to replace it")
    if num_classes < 1:
        raise OodsegError(f"num_classes: must be >= 1, got {num_classes}")
    started = time.perf_counter()
    size = path.stat().st_size
    digest = file_sha256(path, progress=progress)
    log(f"reading {path.name} ({size / 1e9:.2f} GB, {'zip' if zipfile.is_zipfile(path) else 'legacy'} format)")
    raw, top_keys = unwrap_state_dict(read_torch_file(path), path)  # drops the optimizer state with the wrapper
    name = detect_format(raw, top_keys, path) if fmt == "auto" else fmt
    spec = FORMATS[name]
    state, dropped = remap_state_dict(raw, spec)
    del raw
    model, filled = load_strict(spec, state, num_classes, path)
    source = {"file": path.name, "bytes": size, "sha256": digest, "format": name, "published_as": spec.published_file,
              "paper": spec.paper, "url": spec.url, "normalised_by": spec.normalised_by, "score": spec.score}
    params = {"num_classes": num_classes, **spec.params}
    log(f"writing {out}")
    with atomic_directory(out) as tmp:
        save_checkpoint(model, tmp, spec.architecture, params, source=source, conventions=model.conventions())
    return {"out": str(out), "format": name, "architecture": spec.architecture, "params": params, "source": source,
            "conventions": model.conventions(), "keys": len(state),
            "parameters": sum(p.numel() for p in model.parameters()), "dropped_keys": dropped,
            "filled_num_batches_tracked": filled,
            "seconds": round(time.perf_counter() - started, 3)}
