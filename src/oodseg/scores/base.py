"""Scorer base classes and :func:`compute`, which evaluates several scores in one pass.

Three kinds of scorer share one interface (``name``, ``params``, ``needs``, ``key``):

- output-based: ``scorer(out: SegOutput) -> (B, h, w)``; the maths lives in ``score(inputs)``
  on a :class:`~oodseg.scores.shared.ScoreInputs`, so :func:`compute` can share work;
- fitted (``"fit"`` in ``needs``): output-based after ``fit(outputs, labels)``;
- model-based: ``scorer(adapter, images (B, 3, H, W)) -> (B, h, w)``.

Pixel-wise scores are evaluated tile by tile (a few rows at a time) so that the shared
intermediates stay in the CPU cache; the result is identical to a whole-map evaluation.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable, Sequence

import torch

from oodseg.adapter import SegOutput
from oodseg.errors import OodsegError
from oodseg.scores.shared import ScoreInputs, check_finite

#: Pixels per tile for pixel-wise scores (rows are grouped until a tile holds about this many).
TILE_PIXELS = 1 << 15

#: every scorer class by ``name``, filled when a class declaring a ``name`` is defined
REGISTRY: dict[str, type["Scorer"]] = {}
#: ``needs`` that only a model with a 1×1 classifier head provides (none in the adapter's logits-only mode)
HEAD_INPUTS = frozenset({"features", "weight", "block"})


class Scorer:
    """Base of every score. Subclasses set ``name``, ``needs``, ``pixelwise`` and implement
    ``score(inputs) -> (B, h, w)`` (output-based) or ``__call__(adapter, images)`` (model-based).

    Constructor keyword arguments are the score's parameters; :attr:`params` holds them all.
    A subclass that declares a ``name`` is registered under it (:data:`REGISTRY`).
    """

    name: str = ""
    needs: frozenset[str] = frozenset({"logits"})
    #: True when each output pixel depends only on the same pixel of the inputs (safe to tile).
    pixelwise: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in REGISTRY and REGISTRY[name].__qualname__ != cls.__qualname__:
                raise TypeError(f"score {name!r}: declared by {REGISTRY[name].__qualname__} and {cls.__qualname__}")
            REGISTRY[name] = cls

    def __init__(self, **params: Any):
        self.params = params

    @property
    def needs_fit(self) -> bool:
        """True when the score must be fitted (``fit`` or ``load_state_dict``) before use."""
        return "fit" in self.needs

    @property
    def needs_head(self) -> bool:
        """True when the score needs the 1×1 classifier head: its input features ``z``, weight or block."""
        return bool(self.needs & HEAD_INPUTS)

    @property
    def runs_model(self) -> bool:
        """True when the score runs the model itself: ``scorer(adapter, images)``."""
        return "model" in self.needs

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Default value of every parameter of the constructor."""
        signature = inspect.signature(cls.__init__)
        return {n: p.default for n, p in signature.parameters.items()
                if n != "self" and p.kind is p.KEYWORD_ONLY}

    def resolved_defaults(self) -> dict[str, Any]:
        """The defaults :attr:`key` compares with (a scorer whose defaults depend on another parameter overrides it)."""
        return self.defaults()

    @property
    def key(self) -> str:
        """``name`` when every parameter is at its default, else ``name[param=value,...]``."""
        defaults = self.resolved_defaults()
        changed = [f"{k}={v}" for k, v in sorted(self.params.items())
                   if k in defaults and not _same(defaults[k], v)]
        return f"{self.name}[{','.join(changed)}]" if changed else self.name

    def score(self, inputs: ScoreInputs) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, out: SegOutput) -> torch.Tensor:
        """(B, h, w) float32 anomaly map of one head output."""
        return compute([self], out)[self.key]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class FittedScorer(Scorer):
    """A score with statistics fitted on in-distribution outputs; unusable before :meth:`fit`."""

    def fit(self, outputs: Iterable[SegOutput], labels: Iterable[torch.Tensor] | None = None) -> "FittedScorer":
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "FittedScorer":
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        raise NotImplementedError

    def require_fitted(self) -> None:
        if not self.fitted:
            raise OodsegError(f"{self.name}: not fitted; call .fit(outputs, labels) or .load_state_dict(state) first")


class ModelScorer(Scorer):
    """A score that runs the model itself: ``scorer(adapter, images) -> (B, h, w)``."""

    needs = frozenset({"model"})

    def __call__(self, adapter: Any, images: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError


def as_adapter(model: Any) -> Any:
    """A model adapter for ``model``: returned as is when it already is one (callable with ``.model``),
    else ``oodseg.adapter.ModelAdapter(model)`` for an ``nn.Module``."""
    if isinstance(model, torch.nn.Module):
        from oodseg import adapter as adapter_module

        if not hasattr(adapter_module, "ModelAdapter"):
            raise OodsegError("model: oodseg.adapter.ModelAdapter is unavailable; pass an adapter")
        return adapter_module.ModelAdapter(model)
    if callable(model) and isinstance(getattr(model, "model", None), torch.nn.Module):
        return model
    raise OodsegError(f"model: expected an nn.Module or a ModelAdapter, got {type(model).__name__}")


def refuse_head_scores(scorers: Sequence[Scorer], model: str) -> None:
    """OodsegError naming every scorer that needs a 1×1 classifier head, for a ``model`` seen in logits-only mode."""
    names = [scorer.key for scorer in scorers if scorer.needs_head]
    if names:
        raise OodsegError(f"{', '.join(names)}: need{'s' if len(names) == 1 else ''} the input features of a 1×1 "
                          f"classifier head, and {model} has none that reproduces its output (logits-only mode); "
                          f"scores of the logits or of the model (msp, entropy, energy, sml, odin, ...) still work")


def check_images(images: object) -> torch.Tensor:
    """``images`` if it is a finite floating-point (B, 3, H, W) tensor (dtype kept), else :class:`OodsegError`."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise OodsegError(f"images: expected a tensor of shape (B, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise OodsegError(f"images: expected floats in [0, 1], got {images.dtype}")
    check_finite("images", images)
    return images


def check_choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    """``value`` if it is one of ``options``, else :class:`OodsegError` listing them."""
    if value not in options:
        raise OodsegError(f"{name}: {value!r} is not one of {', '.join(repr(o) for o in options)}")
    return value


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float when it is a finite number > 0, else :class:`OodsegError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise OodsegError(f"{name}: must be a positive number, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: Any) -> int:
    """``value`` when it is an int >= 1 (not a bool), else :class:`OodsegError` ``"<name> must be a positive integer"``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OodsegError(f"{name} must be a positive integer, got {value!r}")
    return value


def compute(scorers: Sequence[Scorer | str] | Scorer | str, out: SegOutput) -> dict[str, torch.Tensor]:
    """Several output-based scores of one head output, sharing softmax, logsumexp, norms and ``W z``.

    Args:
        scorers: scorers or registered names (a name means the scorer with default parameters).
        out: the head output.
    Returns:
        ``{scorer.key: (B, h, w) float32}`` in the order given.
    """
    from oodseg.scores import get

    if isinstance(scorers, (Scorer, str)):
        scorers = [scorers]
    resolved = [get(s) if isinstance(s, str) else s for s in scorers]
    for scorer in resolved:
        if not isinstance(scorer, Scorer):
            raise OodsegError(f"scores: expected a scorer or a name, got {type(scorer).__name__}")
        if scorer.runs_model:
            raise OodsegError(f"{scorer.name}: runs the model; call it as scorer(adapter, images)")
        if scorer.needs_fit:
            scorer.require_fitted()
    # NaN/Inf: each tile checks its own rows (while they are in the cache) unless a score needs the whole map
    tiles_check = all(s.pixelwise for s in resolved)
    whole = ScoreInputs(out, checked=tiles_check)
    if out.features is None and out.weight is None:
        refuse_head_scores(resolved, "this SegOutput")
    needed = set().union(*(s.needs for s in resolved)) if resolved else set()
    for attribute in ("logits", "features", "weight"):  # validate each input once, as a whole
        if attribute in needed:
            getattr(whole, attribute)
    if "weight" in needed:
        whole.bias
    batch, height, width = whole.map_shape
    results: dict[str, torch.Tensor] = {}
    for scorer in resolved:
        if not scorer.pixelwise:
            results[scorer.key] = _as_map(scorer, scorer.score(whole), whole.map_shape)
    tiled = [s for s in resolved if s.pixelwise]
    if tiled:
        maps = {s.key: torch.empty(batch, height, width, device=_device(out)) for s in tiled}
        rows = max(1, TILE_PIXELS // max(1, width))
        for top in range(0, height, rows):
            tile = ScoreInputs(_tile(out, top, top + rows), checked=not tiles_check)
            for scorer in tiled:
                maps[scorer.key][:, top:top + rows] = scorer.score(tile)
        for scorer in tiled:
            results[scorer.key] = _as_map(scorer, maps[scorer.key], whole.map_shape)
    return {s.key: results[s.key] for s in resolved}


def _tile(out: SegOutput, top: int, bottom: int) -> SegOutput:
    """Rows ``top:bottom`` of ``out``."""
    def rows(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[:, :, top:bottom]

    return SegOutput(logits=rows(out.logits), features=rows(out.features), weight=out.weight, bias=out.bias,
                     image_size=out.image_size, block=None, align_corners=out.align_corners,
                     extras={name: rows(value) for name, value in out.extras.items()})


def _device(out: SegOutput) -> torch.device:
    return (out.logits if out.logits is not None else out.features).device


def _as_map(scorer: Scorer, value: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    if tuple(value.shape) != tuple(shape):  # a bug, not a user error
        raise RuntimeError(f"{scorer.name}: produced shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value.float()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) and type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                                                        and not isinstance(a, bool) and float(a) == float(b))
    except (TypeError, RuntimeError, ValueError):
        return a is b
