"""The state every metric shares: declared once, merged and all-reduced once (torchmetrics' ``add_state``).

A metric calls :meth:`MetricState.add_state` in ``__init__`` for each field of its state and
names its settings in ``SETTINGS``; :meth:`~MetricState.merge` and
:meth:`~MetricState.all_reduce` then follow the declared reductions:

* ``"sum"``   numbers or numpy arrays, added (all-reduced with a sum of the same dtype),
* ``"cat"``   lists, concatenated in rank order (gathered as objects),
* ``"min"`` / ``"max"``  numbers or numpy arrays, element-wise extremes (gathered as objects),
* ``"merge"`` a nested state with its own ``merge``/``all_reduce`` (e.g. a
  :class:`~oodseg.metrics.tally.ScoreTally` or another metric).

Merging two states of different ``SETTINGS`` raises ``OodsegError("merge: ...")``.

``update`` convention of every metric: the model's outputs first (score map, prediction,
uncertainty and probabilities), then ``label``, then optional per-call inputs
(``roi``, ``threshold``, ``removed_masks``, ``positions``, ``score``); all accept one frame
``(H, W)`` or a batch ``(B, H, W)``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from oodseg import distributed
from oodseg.errors import OodsegError, check_choice

REDUCTIONS = ("sum", "cat", "min", "max", "merge")


def _extreme(reduce: str, a, b):
    """Element-wise min or max of two numbers or arrays (arrays keep their dtype)."""
    if isinstance(a, np.ndarray):
        return (np.minimum if reduce == "min" else np.maximum)(a, b)
    return (min if reduce == "min" else max)(a, b)


def _sum_over_ranks(value):
    """``value`` (number or numpy array) summed over all ranks, same type and dtype."""
    if distributed.world_size() == 1:  # one process: nothing to add (and no torch to import)
        return value
    import torch

    if isinstance(value, np.ndarray):
        return distributed.all_reduce_sum(torch.from_numpy(np.ascontiguousarray(value))).numpy()
    dtype = torch.float64 if isinstance(value, float) else torch.int64
    total = distributed.all_reduce_sum(torch.tensor([value], dtype=dtype)).item()
    return type(value)(total)


class MetricState:
    """Base of the metrics: declared state (:meth:`add_state`), one ``merge`` and one ``all_reduce``."""

    SETTINGS: tuple[str, ...] = ()  # attributes two merged states must share

    def add_state(self, name: str, default: Any, reduce: str) -> None:
        """Declare state ``name`` with its initial value and its reduction (one of :data:`REDUCTIONS`)."""
        check_choice("reduce", reduce, REDUCTIONS)
        if "_reductions" not in self.__dict__:
            self._reductions: dict[str, str] = {}
        self._reductions[name] = reduce
        setattr(self, name, default)

    def _settings(self) -> tuple:
        return tuple(getattr(self, name) for name in self.SETTINGS)

    def _check_mergeable(self, other: "MetricState") -> None:
        if type(other) is not type(self):
            raise OodsegError(f"merge: expected a {type(self).__name__}, got a {type(other).__name__}")
        for mine, theirs in zip(self._settings(), other._settings()):
            same = np.array_equal(mine, theirs) if isinstance(mine, np.ndarray) else mine == theirs
            if not same:
                raise OodsegError(f"merge: {type(self).__name__} differ in {', '.join(self.SETTINGS)}")

    def merge(self, other: "MetricState") -> "MetricState":
        """Add ``other``'s state (same type and settings); merging halves equals one pass. Returns self."""
        self._check_mergeable(other)
        for name, reduce in self._reductions.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if reduce == "sum" and isinstance(mine, np.ndarray) and np.result_type(mine, theirs) == mine.dtype:
                np.add(mine, theirs, out=mine)  # in place: a streaming tally is 16 MiB
            elif reduce in ("sum", "cat"):  # numbers and arrays add, lists concatenate
                setattr(self, name, mine + theirs)
            elif reduce == "merge":
                mine.merge(theirs)
            else:
                setattr(self, name, _extreme(reduce, mine, theirs))
        return self

    def all_reduce(self) -> None:
        """Combine the state of all ranks in place (every rank ends with the whole); no-op in one process."""
        if distributed.world_size() == 1:
            return
        for name, reduce in self._reductions.items():
            value = getattr(self, name)
            if reduce == "sum":
                setattr(self, name, _sum_over_ranks(value))
            elif reduce == "merge":
                value.all_reduce()
            else:
                gathered = distributed.all_gather_objects(value)
                combined = gathered[0]
                for part in gathered[1:]:
                    combined = combined + part if reduce == "cat" else _extreme(reduce, combined, part)
                setattr(self, name, combined)
