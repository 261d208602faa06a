"""KEY=VALUE arguments — ``--param``/``-p``, ``--arch-param``, ``--option``/``-o``, ``score --param
METHOD.KEY=VALUE`` and the benchmarks' ``-p RECIPE.KEY=VALUE`` — with one parser and one value rule.

Value rule (:func:`parse_value`): the text after the first ``=`` is read as a JSON literal —
numbers (``0.5``, ``1e-3``), ``true``/``false``/``null``, lists (``[8,16,32]``), objects, quoted
strings — and otherwise kept as text with surrounding whitespace removed (``mode=mix`` → ``"mix"``,
``mapping=0:0,1:1`` → ``"0:0,1:1"``). Dataset layout options are text by nature, so
``--option`` keeps every value as text (``value=str.strip``): ``city=1`` stays ``"1"``.
A key given twice keeps its last value. :func:`check_keywords` holds parsed pairs against the
signature of the function or class they configure (a recipe, an architecture): unknown keys and
values of the wrong type get one line listing the valid keys and their types.
Torch-free, so the CLI imports it at start-up.
"""
from __future__ import annotations

import collections.abc
import inspect
import json
import os
import types
import typing
from typing import Any, Callable, Iterable, Mapping

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


def check_keywords(where: str, factory: Callable, params: Mapping[str, Any], closed: bool | None = None) -> None:
    """Refuse ``params`` that ``factory`` (a function or class) cannot take, judged by its signature.

    A key that is not a named parameter raises OodsegError ``"<where>: unknown key(s) foo; valid keys:
    lam (float), mode (str)"`` when ``closed`` (default: ``factory`` has no ``**kwargs``); a value that
    does not fit the annotation raises ``"<where>: lam expects float, got 'abc'"``. Annotations read
    as JSON values: ``float`` takes integers, a sequence takes a list, ``X | None`` takes null.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    parameters = inspect.signature(target).parameters
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that does not resolve: check names only
        hints = {}
    named = [n for n, p in parameters.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if closed is None:
        closed = not any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(params) - set(named))
    if unknown and closed:
        valid = ", ".join(f"{name} ({_type_name(hints.get(name, Any))})" for name in named) or "none"
        raise OodsegError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {valid}")
    for key, value in params.items():
        if key in named and not _fits(value, hints.get(key, Any)):
            raise OodsegError(f"{where}: {key} expects {_type_name(hints[key])}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a parsed JSON value or a Python argument) fits the annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint in (int, float, bool):
        allowed = {bool: (bool,), int: (int,), float: (int, float)}[hint]
        return isinstance(value, allowed) and (hint is bool or not isinstance(value, bool))
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return isinstance(value, (str, os.PathLike))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_fits(v, a) for v, a in zip(value, args)))
    if origin in (tuple, list, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    kind = origin or hint
    return isinstance(value, kind) if isinstance(kind, type) else True  # an annotation not checkable here


def _type_name(hint: Any) -> str:
    """``hint`` in words: ``float``, ``list[int]``, ``[float, float]``, ``int | list[int] | null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return "any"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "[" + ", ".join(_type_name(arg) for arg in args) + "]"
    if origin in (tuple, list, collections.abc.Sequence):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is not None:
        return getattr(origin, "__name__", str(hint))
    return getattr(hint, "__name__", str(hint))
