"""The one exception type users see: a one-line message naming the problem."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


class OodsegError(ValueError):
    """Bad input or an impossible request; the CLI prints ``error: <message>`` and exits 2.

    Raise it with a single line that names the offending file/argument and what is wrong,
    e.g. ``OodsegError("scores/abc.hdf5: contains NaN")``.
    """


class OodsegWarning(UserWarning):
    """A result may mislead (e.g. float16 storage merged distinct scores); the CLI prints ``warning: <message>``.

    Issued with :func:`warnings.warn` as one line naming the file or method and the measured problem.
    """


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message for a one-line error: as is for an OodsegError, else prefixed with its
    type (``"OSError: [Errno 28] No space left on device"``); the type's name alone when the message is empty."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if not first:
        return type(exc).__name__
    return first if isinstance(exc, OodsegError) else f"{type(exc).__name__}: {first}"


def check_choice(argument: str, value: T, choices: Iterable) -> T:
    """``value`` when it is one of ``choices``; else OodsegError ``"<argument>: expected one of a, b, got 'x'"``."""
    choices = list(choices)
    if value not in choices:
        raise OodsegError(f"{argument}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value
