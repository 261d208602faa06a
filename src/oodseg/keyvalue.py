"""KEY=VALUE arguments — ``--param``/``-p``, ``--arch-param``, ``--option``/``-o``, ``score --param
METHOD.KEY=VALUE`` and the benchmarks' ``-p RECIPE.KEY=VALUE`` — with one parser and one value rule.

Value rule (:func:`parse_value`): the text after the first ``=`` is read as a JSON literal —
numbers (``0.5``, ``1e-3``), ``true``/``false``/``null``, lists (``[8,16,32]``), objects, quoted
strings — and otherwise kept as text with surrounding whitespace removed (``mode=mix`` → ``"mix"``,
``mapping=0:0,1:1`` → ``"0:0,1:1"``). Dataset layout options are text by nature, so
``--option`` keeps every value as text (``value=str.strip``): ``city=1`` stays ``"1"``.
A key given twice keeps its last value. Torch-free, so the CLI imports it at start-up.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from oodseg.errors import OodsegError


def parse_value(text: str) -> Any:
    """``text`` as a JSON literal, else ``text.strip()``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text.strip()


def parse_pairs(items: Iterable[str], argument: str, value: Callable[[str], Any] = parse_value) -> dict[str, Any]:
    """``["lam=0.5", "widths=[8,16]"]`` → ``{"lam": 0.5, "widths": [8, 16]}``; ``argument`` names the
    option in the one-line error for an item without ``=`` or with an empty key."""
    pairs = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise OodsegError(f"{argument}: expected KEY=VALUE, got {item!r}")
        pairs[key.strip()] = value(raw)
    return pairs


def parse_scoped(items: Iterable[str], argument: str, scope: str, example: str) -> dict[str, dict[str, Any]]:
    """``["odin.epsilon=0.002", "pgn.label=uniform"]`` → ``{"odin": {"epsilon": 0.002}, "pgn": {"label": "uniform"}}``.

    ``scope`` names the part before the dot in the error (``METHOD``, ``RECIPE``); ``example`` is a valid item.
    """
    scoped: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        outer, dot, key = (part.strip() for part in target.partition("."))
        if not sep or not dot or not outer or not key:
            raise OodsegError(f"{argument} {item!r}: expected {scope}.KEY=VALUE, e.g. {example}")
        scoped.setdefault(outer, {})[key] = parse_value(raw)
    return scoped
