"""Architectures by name: ``build_model("small", num_classes=19)``.

A name maps to a factory ``(**params) -> nn.Module`` or to a lazy import string:
``"package.module:attr"`` (the factory is that attribute) or ``"package.module"`` (importing
the module registers the name itself via :func:`register_architecture`).
"""
from __future__ import annotations

import importlib
from typing import Callable, Union

from torch import nn

from oodseg.errors import OodsegError
from oodseg.keyvalue import check_keywords

Factory = Callable[..., nn.Module]

_ARCHITECTURES: dict[str, Union[Factory, str]] = {
    "deeplabv3plus": "oodseg.models.deeplab:DeepLabV3Plus",
    "deepwv3plus": "oodseg.models.deepwv3:DeepWV3Plus",
    "deepwv3plus-rpl": "oodseg.models.deepwv3:DeepWV3PlusRPL",
    "deepwv3plus-th": "oodseg.models.deepwv3:DeepWV3PlusTH",
    "ldn121": "oodseg.models.ldn:LDN121",
    "small": "oodseg.models.small:SmallSegNet",
    "small-mask2former": "oodseg.models.maskformer:SmallMask2Former",
    "rpl": "oodseg.models.rpl:build_rpl_model",
    "source": "oodseg.models.sources:build_source_model",
}


def register_architecture(name: str, factory: Union[Factory, str]) -> None:
    """Register ``factory`` (a callable or a lazy ``"module[:attr]"`` string) under ``name``."""
    if not isinstance(name, str) or not name:
        raise OodsegError(f"architecture name must be a non-empty string, got {name!r}")
    if not (callable(factory) or isinstance(factory, str)):
        raise OodsegError(f"architecture {name!r}: factory must be callable or a 'module:attr' string")
    _ARCHITECTURES[name] = factory


def available_architectures() -> list[str]:
    """Sorted names of the registered architectures."""
    return sorted(_ARCHITECTURES)


def get_factory(name: str) -> Factory:
    """The factory for ``name``, importing its module first when registered lazily."""
    entry = _ARCHITECTURES.get(name)
    if entry is None:
        raise OodsegError(f"architecture {name!r}: unknown; available: {', '.join(available_architectures())}")
    if callable(entry):
        return entry
    module_name, _, attr = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OodsegError(f"architecture {name!r}: cannot import {module_name} ({exc})") from exc
    if attr:
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise OodsegError(f"architecture {name!r}: {module_name} has no callable {attr!r}")
        _ARCHITECTURES[name] = factory
        return factory
    registered = _ARCHITECTURES.get(name)
    if not callable(registered):
        raise OodsegError(f"architecture {name!r}: importing {module_name} did not register it")
    return registered


def build_model(architecture: str, **params) -> nn.Module:
    """Build an untrained network of the named architecture with constructor ``params`` (unknown keys and
    values of the wrong type refused in one line listing the valid keys, :func:`oodseg.keyvalue.check_keywords`)."""
    factory = get_factory(architecture)
    check_keywords(f"architecture {architecture!r}", factory, params)
    try:
        return factory(**params)
    except OodsegError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OodsegError(f"architecture {architecture!r}: bad parameters {params}: {message}") from exc
