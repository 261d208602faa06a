"""Model sources: where a segmentation network comes from, and how it expects its input and gives its output.

One string names a model everywhere oodseg takes one (``score --checkpoint``, ``--ensemble``,
``train --init``, ``meta --probs``, ``evaluate --probs``, ``oodseg import``):

* ``DIR`` — an oodseg checkpoint directory (``model.json`` + ``model.safetensors``);
* ``python:package.module:factory`` — ``factory(**model_args)`` returns the ``nn.Module``; weights from
  ``weights=FILE`` (``.safetensors``, or ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``;
  a ``state_dict``/``model``/``model_state`` wrapper is unwrapped and a ``module.`` prefix stripped), loaded
  strictly (a mismatch is a one-line diff of missing / unexpected keys and shapes);
* ``hf:DIR`` — a transformers ``save_pretrained`` folder, built with ``AutoModelForSemanticSegmentation``
  from its ``config.json`` and weights, offline (``local_files_only``); its ``preprocessor_config.json``
  gives the normalisation and channel order;
* ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None, **model_args)`` (a
  segmentation model), weights from ``weights=FILE``; ImageNet normalisation by default.

Options follow a ``?`` as ``KEY=VALUE`` pairs joined by ``&`` (the CLI's ``--weights``, ``--model-arg``,
``--normalize``, ``--channel-order``, ``--output-key``, ``--head``, ``--align-corners`` add them):
``python:mynets:build?weights=net.pth&normalize=imagenet&num_classes=19``. The keys of
:data:`OPTION_KEYS` are conventions; every other key is a model argument (value: JSON literal, else text).

The conventions (:class:`ModelConventions`) are attached to the user's own module by
:func:`apply_conventions` — a forward pre-hook maps oodseg's input (RGB in [0, 1], (B, 3, H, W)) to what
the network was trained on, a forward hook picks the output entry — so module and parameter names stay
the user's: ``head=NAME`` and RPL's ``feature_module`` name modules of the user's model, and the
state dict keeps the user's keys. :func:`import_model_source` writes any source as an oodseg
checkpoint of the architecture ``"source"`` (:func:`build_source_model`), which records the source,
its model arguments, its conventions and (``hf:``) its config, so it reloads in a fresh process
without the original folder or any registration (a ``python:`` factory's module must be importable).
"""
from __future__ import annotations

import importlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from oodseg.conventions import IMAGENET_MEAN, IMAGENET_STD, model_logits
from oodseg.errors import OodsegError, OodsegWarning, check_choice, one_line
from oodseg.keyvalue import parse_value
from oodseg.models.checkpoint import (META_FILE, RESERVED_KEYS, check_state_dict, default_classes,
                                      load_checkpoint, save_checkpoint)

#: source prefixes besides a checkpoint directory
PREFIXES = ("python:", "hf:", "torchvision:")
#: option keys that are conventions or the weights file (any other key is a model argument)
OPTION_KEYS = ("weights", "normalize", "channel_order", "output_key", "head", "align_corners")
#: the architecture name under which imported sources are saved (:func:`build_source_model`)
ARCHITECTURE = "source"
#: ImageNet mean and std on the [0, 1] scale (torchvision's and most HF processors' statistics)
IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
CHANNEL_ORDERS = ("rgb", "bgr")
#: side of the square random image of the check forward pass (class count, output entry)
PROBE_SIZE = 64
#: relative logit difference a written checkpoint may show against its source (float rounding of
#: rebuilt modules; a wrong or missing weight gives differences of order 1)
RELOAD_TOLERANCE = 1e-5
#: HF model types whose forward upsamples the classifier's output with ``align_corners=True``
#: (DPT's head ends in ``nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)``)
HF_ALIGN_CORNERS = {"dpt": True}
_CONVENTIONS_ATTR = "oodseg_conventions"
#: ``word:`` at the start of a source string
_PREFIXED = re.compile(r"([A-Za-z][\w.+-]*):")
_WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


# --- conventions ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConventions:
    """How a network expects its input and gives its output.

    Attributes:
        mean, std: per-channel statistics on the [0, 1] scale, in the network's channel order; the network
            receives ``(x - mean) / std``. None: no normalisation.
        channel_order: ``"rgb"`` or ``"bgr"`` (the channels are reversed before normalising).
        output_key: entry of the output holding the logits (a mapping key or a tuple index); None:
            :func:`oodseg.conventions.model_logits` decides.
        head: module name (in the user's model) of the final 1×1 classifier conv; None: found by the adapter.
        align_corners: how the network upsamples its logits (the adapter upsamples scores so); None:
            the model's own ``align_corners`` attribute, else False.
    """

    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: str = "rgb"
    output_key: str | None = None
    head: str | None = None
    align_corners: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (``normalize``: ``{"mean": [...], "std": [...]}`` or None)."""
        normalize = None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)}
        return {"normalize": normalize, "channel_order": self.channel_order, "output_key": self.output_key,
                "head": self.head, "align_corners": self.align_corners}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "ModelConventions":
        """Inverse of :meth:`to_json` (missing keys take the defaults)."""
        data = dict(data or {})
        normalize = data.pop("normalize", None)
        mean, std = (None, None) if normalize is None else (tuple(normalize["mean"]), tuple(normalize["std"]))
        return cls(mean=mean, std=std, **data)

    def updated(self, options: Mapping[str, Any]) -> "ModelConventions":
        """These conventions with the given option values (:data:`OPTION_KEYS` spelling, text or values) applied."""
        changes: dict[str, Any] = {}
        if options.get("normalize") is not None:
            changes["mean"], changes["std"] = parse_normalize(options["normalize"])
        if options.get("channel_order") is not None:
            changes["channel_order"] = check_choice("channel_order", str(options["channel_order"]).lower(),
                                                    CHANNEL_ORDERS)
        for key in ("output_key", "head"):
            if options.get(key) is not None:
                changes[key] = str(options[key])
        if options.get("align_corners") is not None:
            changes["align_corners"] = _parse_bool(options["align_corners"], "align_corners")
        return replace(self, **changes)


def parse_normalize(text: Any) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """``"imagenet"`` / ``"none"`` / ``"M1,M2,M3/S1,S2,S3"`` (the [0, 1] scale) → ``(mean, std)`` or ``(None, None)``."""
    spelled = str(text).strip().lower()
    if spelled == "imagenet":
        return IMAGENET
    if spelled == "none":
        return None, None
    mean_text, slash, std_text = spelled.partition("/")
    try:
        mean = tuple(float(v) for v in mean_text.split(","))
        std = tuple(float(v) for v in std_text.split(","))
    except ValueError:
        mean = std = ()
    if not slash or len(mean) != 3 or len(std) != 3:
        raise OodsegError(f"normalize: expected imagenet, none or M1,M2,M3/S1,S2,S3, got {text!r}")
    if max(abs(v) for v in mean) > 1 or max(std) > 1:
        raise OodsegError(f"normalize: {text!r} looks like the 0..255 scale; give mean/std on the [0, 1] scale "
                          "(divide by 255)")
    if min(std) <= 0:
        raise OodsegError(f"normalize: std must be > 0, got {text!r}")
    return mean, std


def _parse_bool(value: Any, argument: str) -> bool:
    if isinstance(value, bool):
        return value
    spelled = str(value).strip().lower()
    if spelled in ("true", "1", "yes"):
        return True
    if spelled in ("false", "0", "no"):
        return False
    raise OodsegError(f"{argument}: expected true or false, got {value!r}")


def _prepare_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: oodseg's [0, 1] RGB images → the network's input (channel order, then normalisation)."""
    if not args or not isinstance(args[0], torch.Tensor):
        raise OodsegError(f"model {type(module).__name__}: call it with the images (B, 3, H, W) as first argument")
    conventions: ModelConventions = getattr(module, _CONVENTIONS_ATTR)
    images = args[0]
    if conventions.channel_order == "bgr":
        images = images.flip(1)
    if conventions.mean is not None:
        images = (images - module.oodseg_input_mean.to(images.dtype)) / module.oodseg_input_std.to(images.dtype)
    return (images, *args[1:])


def _select_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: the output entry named by ``output_key`` (a mapping key, a tuple index or an attribute)."""
    key = getattr(module, _CONVENTIONS_ATTR).output_key
    if key is None:
        return None
    if isinstance(output, Mapping):
        if key in output:
            return output[key]
        raise OodsegError(f"output_key {key!r}: the model's output has the entries {', '.join(map(repr, output))}")
    if isinstance(output, (tuple, list)):
        if key.isdigit() and int(key) < len(output):
            return output[int(key)]
        raise OodsegError(f"output_key {key!r}: the model returns a {len(output)}-tuple; give an index 0..{len(output) - 1}")
    if hasattr(output, key):
        return getattr(output, key)
    raise OodsegError(f"output_key {key!r}: the model returns a {type(output).__name__} without that entry")


def apply_conventions(model: nn.Module, conventions: ModelConventions) -> nn.Module:
    """Attach ``conventions`` to ``model`` itself and return it (no wrapper: names stay the user's).

    Adds non-persistent buffers ``oodseg_input_mean``/``oodseg_input_std`` (1, 3, 1, 1) when normalising
    (not in the state dict; moved by ``.to()``), a forward pre-hook (channel order, normalisation), a
    forward hook (``output_key``), the attribute ``oodseg_conventions``, and ``align_corners`` when set.
    """
    if hasattr(model, _CONVENTIONS_ATTR):
        raise OodsegError(f"model {type(model).__name__}: conventions are already attached")
    if conventions.mean is not None:
        model.register_buffer("oodseg_input_mean", torch.tensor(conventions.mean, dtype=torch.float32).view(1, 3, 1, 1),
                              persistent=False)
        model.register_buffer("oodseg_input_std", torch.tensor(conventions.std, dtype=torch.float32).view(1, 3, 1, 1),
                              persistent=False)
    setattr(model, _CONVENTIONS_ATTR, conventions)
    if conventions.align_corners is not None:
        model.align_corners = bool(conventions.align_corners)
    model.register_forward_pre_hook(_prepare_input)
    model.register_forward_hook(_select_output)
    return model


def model_conventions(model: Any) -> ModelConventions | None:
    """The conventions :func:`apply_conventions` attached to ``model`` (None for other models)."""
    return getattr(model, _CONVENTIONS_ATTR, None)


def declared_head(model: Any) -> str | None:
    """The classifier head named with the model's source (``head=``), or None: pass it as ``ModelAdapter(head=...)``."""
    conventions = model_conventions(model)
    return None if conventions is None else conventions.head


# --- the source string ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """A parsed model source: ``kind`` (``checkpoint``, ``python``, ``hf``, ``torchvision``), ``target``
    (directory, ``module:factory`` or name), ``options`` (:data:`OPTION_KEYS` given, as text) and
    ``model_args`` (factory keywords)."""

    kind: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> str:
        """The source without options: ``DIR`` or ``PREFIX:TARGET``."""
        return self.target if self.kind == "checkpoint" else f"{self.kind}:{self.target}"

    def spec(self) -> str:
        """The canonical source string (options first, then model arguments, each sorted)."""
        pairs = [f"{k}={v}" for k, v in sorted(self.options.items())]
        pairs += [f"{k}={_format_value(v)}" for k, v in sorted(self.model_args.items())]
        return self.base + ("?" + "&".join(pairs) if pairs else "")

    def __str__(self) -> str:
        return self.spec()


def _format_value(value: Any) -> str:
    if isinstance(value, str) and parse_value(value) == value:
        return value
    return json.dumps(value, separators=(",", ":"))


def is_model_source(text: str | os.PathLike | ModelSource) -> bool:
    """Whether ``text`` names a model rather than a file or folder of data: a ``PREFIX:`` string that is not
    an existing path (an unknown prefix is refused when parsed) or a directory holding ``model.json``."""
    if isinstance(text, ModelSource):
        return True
    base = str(text).partition("?")[0]
    return bool(_PREFIXED.match(base) and not Path(base).exists()) or (Path(base) / META_FILE).is_file()


def parse_model_source(source: str | os.PathLike | ModelSource, *, weights: str | os.PathLike | None = None,
                       model_args: Mapping[str, Any] | None = None, **conventions: Any) -> ModelSource:
    """``source`` (a string, see the module docstring) with the given options added (they win over the
    string's). ``conventions``: ``normalize``, ``channel_order``, ``output_key``, ``head``, ``align_corners``
    (None: not given). Paths (checkpoint, ``hf:`` folder, weights) are made absolute."""
    unknown = sorted(set(conventions) - set(OPTION_KEYS))
    if unknown:
        raise OodsegError(f"{unknown[0]}: not a model option; options: {', '.join(OPTION_KEYS)}")
    if isinstance(source, ModelSource):
        parsed = source
    else:
        parsed = _parse_string(str(source))
    options = dict(parsed.options)
    options.update({k: v for k, v in {"weights": weights, **conventions}.items() if v is not None})
    if options.get("weights") is not None:
        options["weights"] = str(Path(options["weights"]).expanduser().resolve())
    for key in ("normalize", "channel_order", "output_key", "head", "align_corners"):
        if key in options:
            options[key] = _option_text(options[key])
    ModelConventions().updated(options)  # checks the values now, before any model is built
    return ModelSource(parsed.kind, parsed.target, options, {**parsed.model_args, **dict(model_args or {})})


def _option_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _parse_string(text: str) -> ModelSource:
    base, _, query = text.partition("?")
    options: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OodsegError(f"{text}: expected KEY=VALUE after '?', got {item!r}")
        key = key.strip()
        if key in OPTION_KEYS:
            options[key] = raw.strip()
        else:
            model_args[key] = parse_value(raw)
    prefix = next((p for p in PREFIXES if base.startswith(p)), None)
    if prefix is None:
        unknown = _PREFIXED.match(base)
        if unknown and not Path(base).exists():
            raise OodsegError(f"{text}: unknown model source prefix {unknown.group(1) + ':'!r}; expected a checkpoint "
                              f"directory or one of {', '.join(p + '...' for p in PREFIXES)}")
        if query:
            raise OodsegError(f"{text}: a checkpoint directory takes no options (it records its own); "
                              "re-import the model to change them")
        return ModelSource("checkpoint", str(Path(base).expanduser().resolve()))
    kind, target = prefix[:-1], base[len(prefix):]
    if not target:
        raise OodsegError(f"{text}: nothing after {prefix!r}")
    if kind == "hf":
        target = str(Path(target).expanduser().resolve())
    return ModelSource(kind, target, options, model_args)


# --- building and loading -------------------------------------------------------------------------

def load_model_source(source: str | os.PathLike | ModelSource, map_location: str | torch.device = "cpu",
                      num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode on map_location, metadata)`` of any model source (see the module docstring).

    A checkpoint directory loads as :func:`oodseg.models.load_checkpoint`. Other sources are built,
    get their weights (strictly) and conventions, and are checked with one forward pass (its logits
    give the class count; ``num_classes``, when given, must match) and, with ``head``, by
    :class:`~oodseg.adapter.ModelAdapter`. The metadata has ``load_checkpoint``'s keys (``architecture``
    ``"source"``, ``params`` for :func:`build_source_model`, ``num_classes``, ``classes``) and ``source``.
    """
    source = parse_model_source(source)
    if source.kind == "checkpoint":
        if source.options or source.model_args:
            raise OodsegError(f"{source.target}: a checkpoint directory takes no model options (it records its own)")
        return load_checkpoint(source.target, map_location=map_location, num_classes=num_classes)
    if source.kind == "hf":
        model, config, defaults, info = _load_hf(source)
    else:
        config, info = None, {}
        defaults = ModelConventions(mean=IMAGENET[0], std=IMAGENET[1]) if source.kind == "torchvision" else ModelConventions()
        model = _build(source.kind, source.target, source.model_args)
        if "weights" in source.options:
            info["weights"] = _load_weights(model, Path(source.options["weights"]))
        else:
            info["weights"] = "the factory's own (no weights= given)"
    conventions = defaults.updated(source.options)
    model = apply_conventions(model, conventions).to(map_location).eval()
    classes_count = _probe_classes(model, source)
    if num_classes is not None and classes_count != num_classes:
        raise OodsegError(f"{source.spec()}: the model gives {classes_count} classes, expected {num_classes}")
    if conventions.head is not None:
        from oodseg.adapter import ModelAdapter

        ModelAdapter(model, head=conventions.head).close()
    classes = _hf_classes(config, classes_count) if config is not None else default_classes(classes_count)
    params = {"source": source.base, "model_args": dict(source.model_args), "conventions": conventions.to_json(),
              "config": config, "num_classes": classes_count}
    meta = {"architecture": ARCHITECTURE, "params": params, "num_classes": classes_count, "classes": classes,
            "source": {"spec": source.spec(), **info}, "weights_sha256": state_sha256(model)}
    return model, meta


def state_sha256(model: nn.Module) -> str:
    """sha256 (hex) of a model's state dict as loaded: names, dtypes, shapes and bytes in key order — the
    identity of a non-checkpoint source's weights in score manifests (a checkpoint's is its file's sha256)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def build_source_model(source: str, model_args: Mapping[str, Any] | None = None,
                       conventions: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                       num_classes: int | None = None) -> nn.Module:
    """Factory of the ``"source"`` architecture: the untrained network of ``source`` (``python:...``,
    ``torchvision:...``, or ``hf:...`` rebuilt from ``config``, the stored ``config.json`` content) with
    its ``conventions`` attached; the weights come from the checkpoint. ``num_classes`` is recorded only."""
    parsed = _parse_string(source)
    if parsed.kind == "checkpoint" or parsed.options or parsed.model_args:
        raise OodsegError(f"source {source!r}: expected python:MODULE:FACTORY, hf:DIR or torchvision:NAME without options")
    if parsed.kind == "hf":
        if config is None:
            raise OodsegError(f"source {source!r}: an hf: checkpoint needs its stored config")
        model = _hf_from_config(dict(config), source)
    else:
        model = _build(parsed.kind, parsed.target, dict(model_args or {}))
    return apply_conventions(model, ModelConventions.from_json(conventions))


def import_model_source(source: str | os.PathLike | ModelSource, out: str | os.PathLike, overwrite: bool = False,
                        num_classes: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Write ``source`` as the oodseg checkpoint ``out`` (weights as safetensors, ``model.json`` with the source,
    model arguments, conventions and, for ``hf:``, the config). The written checkpoint is reloaded and must
    reproduce the source's logits on a random image before ``out`` appears; nothing is written on error.
    Returns a JSON-ready summary."""
    from oodseg.atomic import atomic_directory
    from oodseg.models.checkpoint import read_checkpoint_meta

    out = Path(out)
    log = log or (lambda message: None)
    if out.exists() and not overwrite:
        raise OodsegError(f"{out}: already exists; pass --overwrite to replace it")
    model, meta = load_model_source(source, num_classes=num_classes)
    extra = {k: v for k, v in meta.items() if k not in RESERVED_KEYS}
    log(f"writing {out}")
    with atomic_directory(out) as tmp:
        save_checkpoint(model, tmp, meta["architecture"], meta["params"], classes=meta["classes"], **extra)
        reloaded, _ = load_checkpoint(tmp)
        difference = _logits_difference(model, reloaded)
        if difference > RELOAD_TOLERANCE:
            raise OodsegError(f"{out}: the written checkpoint's logits differ from the source's by {difference:.3g} "
                              f"(relative; tolerance {RELOAD_TOLERANCE})")
        written = read_checkpoint_meta(tmp)
    described = {"spec": parse_model_source(source).spec(), **(meta.get("source") or {})}
    return {"out": str(out), "architecture": written["architecture"], "num_classes": written["num_classes"],
            "source": described, "params": {k: v for k, v in written["params"].items() if k != "config"},
            "parameters": sum(p.numel() for p in model.parameters())}


def _logits_difference(first: nn.Module, second: nn.Module) -> float:
    """Max |difference| of the two models' logits on one random [0, 1] image, relative to the first's max |logit|."""
    images = torch.rand((1, 3, PROBE_SIZE, PROBE_SIZE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference, other = model_logits(first(images)), model_logits(second(images))
    return float((reference - other).abs().max() / reference.abs().max().clamp_min(1e-12))


def _probe_classes(model: nn.Module, source: ModelSource) -> int:
    """The class count C of the (B, C, h, w) logits of one forward pass on a random image."""
    images = torch.rand((1, 3, PROBE_SIZE, PROBE_SIZE), generator=torch.Generator().manual_seed(0))
    reference = next(iter(model.parameters()), None)
    if reference is not None:
        images = images.to(reference.device)
    try:
        with torch.no_grad():
            logits = model_logits(model(images))
    except (RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, OodsegError):
            raise
        raise OodsegError(f"{source.spec()}: a forward pass on a {PROBE_SIZE}x{PROBE_SIZE} image failed "
                          f"({one_line(exc)})") from exc
    if logits.dim() != 4:
        raise OodsegError(f"{source.spec()}: expected logits of shape (B, C, H, W), got {tuple(logits.shape)} "
                          "(pass output_key=KEY for the entry holding them)")
    return int(logits.shape[1])


def _build(kind: str, target: str, model_args: dict[str, Any]) -> nn.Module:
    """The untrained network of a ``python:`` or ``torchvision:`` source."""
    spec = f"{kind}:{target}"
    factory = _import_factory(target, spec) if kind == "python" else _torchvision_factory(target, spec)
    try:
        model = factory(**model_args)
    except Exception as exc:  # noqa: BLE001 - any failure of user code becomes one line naming the factory
        raise OodsegError(f"{spec}: the factory raised {one_line(exc)} (model arguments {model_args})") from exc
    if not isinstance(model, nn.Module):
        raise OodsegError(f"{spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _import_factory(target: str, spec: str) -> Callable[..., nn.Module]:
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise OodsegError(f"{spec}: expected python:package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an import error of user code, reported as one line
        raise OodsegError(f"{spec}: cannot import {module_name} ({one_line(exc)}); is it on PYTHONPATH?") from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise OodsegError(f"{spec}: {module_name} has no callable {attr!r}")
    return factory


def _torchvision_factory(name: str, spec: str) -> Callable[..., nn.Module]:
    try:
        import torchvision.models
        import torchvision.models.segmentation
    except Exception as exc:  # noqa: BLE001 - a broken install raises RuntimeError/OSError, not ImportError
        raise OodsegError(f"{spec}: torchvision does not import ({one_line(exc)}); PyPI's torchvision for torch "
                          f"{torch.__version__.split('+')[0]} is a CUDA build that does not import on CPU-only "
                          "machines: install the CPU build from https://download.pytorch.org/whl/cpu") from exc
    names = torchvision.models.list_models(module=torchvision.models.segmentation)
    if name not in names:
        raise OodsegError(f"{spec}: not a torchvision segmentation model; choose one of {', '.join(sorted(names))}")
    return lambda **args: torchvision.models.get_model(name, **{"weights": None, "weights_backbone": None, **args})


def _load_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load the state dict in ``path`` into ``model`` strictly (one-line diff on mismatch); returns the file's
    name, size and sha256 for the metadata."""
    from oodseg.models.importing import (file_sha256, fill_batch_counters, read_torch_file, strip_data_parallel,
                                         unwrap_state_dict)

    if not path.is_file():
        raise OodsegError(f"weights {path}: no such file")
    if path.suffix not in _WEIGHTS_SUFFIXES:
        raise OodsegError(f"weights {path}: expected a {', '.join(_WEIGHTS_SUFFIXES)} file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise OodsegError(f"weights {path}: not a readable safetensors file ({one_line(exc)})") from exc
    else:
        state = unwrap_state_dict(read_torch_file(path), path)[0]
    state = strip_data_parallel(state)
    fill_batch_counters(state, model)
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    return {"file": str(path), "bytes": path.stat().st_size, "sha256": file_sha256(path, progress=False)}


# --- transformers ---------------------------------------------------------------------------------

def _transformers(spec: str):
    try:
        import transformers
    except Exception as exc:  # noqa: BLE001 - a broken torchvision next to it raises at import
        raise OodsegError(f"{spec}: transformers does not import ({one_line(exc)}); install it (pip install "
                          "transformers), and note that PyPI's CUDA torchvision breaks its import on CPU machines") from exc
    return transformers


def _load_hf(source: ModelSource) -> tuple[nn.Module, dict[str, Any], ModelConventions, dict[str, Any]]:
    """(model with its weights, config dict, conventions from the preprocessor config, source info) of ``hf:DIR``."""
    spec, folder = source.spec(), Path(source.target)
    if "weights" in source.options:
        raise OodsegError(f"{spec}: an hf: folder brings its own weights; weights= is for python: and torchvision:")
    if source.model_args:
        raise OodsegError(f"{spec}: an hf: folder takes no model arguments (its config.json describes the model)")
    if not (folder / "config.json").is_file():
        raise OodsegError(f"{folder}: no config.json (not a transformers save_pretrained folder)")
    transformers = _transformers(spec)
    bars = transformers.utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # oodseg shows its own progress; keep stderr to one line per problem
    try:
        model, loading = transformers.AutoModelForSemanticSegmentation.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise OodsegError(f"{folder}: transformers cannot build a semantic-segmentation model from it "
                          f"({one_line(exc)})") from exc
    finally:
        if shown:
            bars.enable_progress_bar()
    problems = [f"{len(v)} {k.replace('_', ' ')} (e.g. {', '.join(map(str, list(v)[:3]))})"
                for k, v in loading.items() if v]
    if problems:
        raise OodsegError(f"{folder}: weights do not fit the config: {'; '.join(problems)}")
    config = model.config.to_dict()
    conventions, info = _hf_preprocessing(folder, model.config.model_type)
    return model.eval(), config, conventions, info


def _hf_preprocessing(folder: Path, model_type: str) -> tuple[ModelConventions, dict[str, Any]]:
    """Conventions from ``preprocessor_config.json`` (rescale, normalise, channel flip) and the recorded info."""
    align = HF_ALIGN_CORNERS.get(model_type)
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        warnings.warn(f"{folder}: no preprocessor_config.json; the model gets RGB in [0, 1] unnormalised "
                      "(pass --normalize to change it)", OodsegWarning, stacklevel=3)
        return ModelConventions(align_corners=align), {"preprocessor": None}
    try:
        pre = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OodsegError(f"{path}: corrupt JSON ({exc})") from exc
    # the model sees ((255 x) * rescale - mean) / std for x in [0, 1]: on the [0, 1] scale
    # mean' = mean / (255 rescale) and std' = std / (255 rescale)
    scale = 255.0 * float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True) else 255.0
    if pre.get("do_normalize", True) and "image_mean" in pre:
        mean, std = _three(pre["image_mean"], path), _three(pre["image_std"], path)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean, std = tuple(m / scale for m in mean), tuple(s / scale for s in std)
    identity = all(abs(m) < 1e-12 for m in mean) and all(abs(s - 1) < 1e-12 for s in std)
    conventions = ModelConventions(mean=None if identity else mean, std=None if identity else std,
                                   channel_order="bgr" if pre.get("do_flip_channel_order") else "rgb",
                                   align_corners=align)
    info = {"preprocessor": {k: pre.get(k) for k in ("image_processor_type", "do_rescale", "rescale_factor",
                                                      "do_normalize", "image_mean", "image_std",
                                                      "do_flip_channel_order", "size") if k in pre}}
    return conventions, info


def _three(values: Any, path: Path) -> tuple[float, float, float]:
    values = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) != 3:
        raise OodsegError(f"{path}: expected 3 channel statistics, got {values}")
    return tuple(values)


def _hf_from_config(config: dict[str, Any], spec: str) -> nn.Module:
    transformers = _transformers(spec)
    model_type = config.get("model_type")
    try:
        built = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in config.items() if k != "model_type"})
        return transformers.AutoModelForSemanticSegmentation.from_config(built).eval()
    except (ValueError, KeyError, TypeError) as exc:
        raise OodsegError(f"{spec}: transformers cannot rebuild model type {model_type!r} ({one_line(exc)})") from exc


def _hf_classes(config: dict[str, Any], num_classes: int) -> list[str]:
    """Class names from the config's ``id2label`` (keys may be strings), else the defaults."""
    labels = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    if sorted(labels) == list(range(num_classes)):
        return [labels[i] for i in range(num_classes)]
    return default_classes(num_classes)
