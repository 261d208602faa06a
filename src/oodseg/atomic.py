"""Atomic file output: write to a temporary file (or folder) next to the target, then rename.

A reader never sees a half-written file, and an error leaves the target untouched. Files end
with the permissions ``0666 & ~umask`` and folders ``0777 & ~umask`` (what ``open``/``mkdir``
give), not the private ``0600``/``0700`` of :mod:`tempfile`. A temporary folder is locked
(``flock``) by the process that builds it, so the next run removes the ones a killed process
left (:func:`remove_stale`) without touching one that is still being built.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from oodseg.errors import OodsegError

_umask_lock = threading.Lock()


def umask() -> int:
    """The process umask, read from ``/proc/self/status`` (``os.umask`` can only read it by setting it, which
    threads writing files at the same time must not see); elsewhere set and restored under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        current = os.umask(0o077)
        os.umask(current)
        return current


def publish_mode(path: Path, folder: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open``/``mkdir`` would: ``0666`` or ``0777`` (folder) less the umask."""
    path.chmod((0o777 if folder else 0o666) & ~umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the suffix of ``path`` (libraries that pick a format by
    suffix keep working). On any exception the temporary file is removed and ``path``
    is left as it was.
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{path.suffix}", dir=path.parent)
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _naming(path):
            yield tmp_path
            if tmp_path.is_file():
                publish_mode(tmp_path)
            os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` (e.g. ``ENOSPC`` from ``write``, which names no file, or one naming the
    temporary file) as one naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with plain file I/O (a full disk is an ``OSError``, nothing left)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _staging_pattern(path: Path) -> re.Pattern:
    return re.compile(rf"\.{re.escape(path.name)}\.(partial|old)-[A-Za-z0-9_]+")


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders of ``path`` (:func:`staging_directory`) that no live process holds; returns them.

    A run killed between the two renames of :func:`atomic_directory` leaves no ``path`` and its
    previous version in ``.{name}.old-*/previous``: that version is put back at ``path`` first.
    """
    path = Path(path)
    pattern, removed = _staging_pattern(path), []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.iterdir():
        if not pattern.fullmatch(candidate.name) or candidate.is_symlink() or not candidate.is_dir():
            continue
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a running build (or locks unsupported here): leave it
            continue
        else:
            previous = candidate / "previous"
            if candidate.name.startswith(f".{path.name}.old-") and previous.is_dir() and not path.exists():
                os.replace(previous, path)
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def staging_directory(path: str | os.PathLike, tag: str = "partial") -> Iterator[Path]:
    """Yield a new hidden folder ``.{name}.{tag}-XXXX`` next to ``path``, locked while the block runs.

    Stale folders of ``path`` left by killed processes are removed first. Whatever is still at
    the yielded path when the block ends is deleted (rename it away to keep it).
    """
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-", dir=path.parent))
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``path``; on success it becomes ``path``.

    A previous folder at ``path`` is replaced only after the new one is complete (the
    caller decides whether replacing is allowed). On any exception the temporary folder
    is removed and ``path`` is left as it was; temporary folders of killed runs are removed
    by the next one (:func:`staging_directory`).
    """
    path = Path(path)
    with staging_directory(path) as tmp:
        yield tmp
        publish_mode(tmp, folder=True)
        if not path.exists():
            os.replace(tmp, path)
            return
        with staging_directory(path, "old") as old:
            os.replace(path, old / "previous")
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old / "previous", path)
                raise


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created, kept) while the block runs; the kernel releases
    it when the process ends, killed or not. A second holder gets OodsegError ``"<folder>: another <what> …"``."""
    lock_file = Path(lock_file)
    created = next((p for p in reversed(lock_file.parents) if not p.exists()), None)  # topmost folder made here
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise OodsegError(f"{lock_file.parent}: cannot write here ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OodsegError(f"{lock_file.parent}: another {what} is writing here (it holds {lock_file.name}); "
                              "wait for it to finish or choose another folder") from None
        yield
    except BaseException:
        if created is not None and not any(p != lock_file for p in lock_file.parent.iterdir()):
            _remove_created(lock_file, created)  # a refused run leaves no folder behind
        raise
    finally:
        os.close(fd)


def _remove_created(lock_file: Path, created: Path) -> None:
    """Remove ``lock_file`` and its empty parent folders up to ``created`` (which this run made)."""
    with contextlib.suppress(OSError):
        lock_file.unlink()
        folder = lock_file.parent
        while True:
            folder.rmdir()
            if folder == created:
                break
            folder = folder.parent
