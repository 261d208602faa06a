"""Worker processes of the command engines: how many, a bounded writer pool, ordered work on chunks.

How many: :func:`resolve_workers` (None: :func:`default_workers`; 0: inline in the caller; more than the
items: as many as the items; negative: an error). :func:`map_chunks` runs a function on contiguous chunks
of frames in worker processes and yields the results in order (``oodseg evaluate``).

File writing off the critical path (``oodseg score``): a bounded pool of writer processes with back-pressure.
``oodseg score`` hands each frame's maps and prediction to :class:`WriterPool` as one job
(``submit_batch([(write, path, args), ...])``: one transfer, one place in the queue) and goes on with
the next batch. Processes, not threads: h5py serialises every call through one
global lock, so two threads writing gzip HDF5 files take as long as one (measured: 4 writes of a
1024×2048 float32 map, 0.90 s in one thread, 0.92 s in two; docs/performance.md).

Back-pressure: at most ``max_pending`` jobs (each holding one frame's maps) are queued or running; a further
``submit_batch`` first waits for the oldest, so memory stays bounded however fast the model runs. The first
failed job (disk full, permission denied) is raised by the next ``submit_batch`` / :meth:`WriterPool.drain`
as a one-line :class:`~oodseg.errors.OodsegError`; the pool then cancels what is queued and waits for
the running writes, which are atomic (:mod:`oodseg.atomic`): a file exists complete or not at all.
A writer whose parent process died (``SIGKILL``) exits within :data:`ORPHAN_CHECK_SECONDS`.

The processes are forked (DataLoader's choice on Linux): they start in milliseconds and need no
``if __name__ == "__main__"`` guard in a caller's script. This module imports no torch, so ``oodseg
evaluate`` of score files never loads it.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from oodseg.atomic import atomic_path
from oodseg.errors import OodsegError, one_line
from oodseg.progress import track

T, R = TypeVar("T"), TypeVar("R")
#: How often a writer process checks that the process that started it is still alive (seconds).
ORPHAN_CHECK_SECONDS = 0.2
#: Fewest items per chunk of :func:`map_chunks` (unless more workers than chunks would be left idle).
MIN_CHUNK = 8


def default_workers() -> int:
    """Workers when none are asked for: half the cores this process may use, at most 8; 0 (inline) below 4
    cores, where worker processes only take cores from the forward and the metrics (measured on 2 cores:
    ``benchmarks/pipeline.py``, docs/performance.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores < 4 else min(8, cores // 2)


def resolve_workers(workers: int | None, n_items: int) -> int:
    """``workers`` checked (negative: an error; None: :func:`default_workers`) and clamped to ``n_items``.

    0 means inline: decoding and writing run in the calling process, one after the other.
    """
    if workers is None:
        workers = default_workers()
    if workers < 0:
        raise OodsegError(f"workers: must be >= 0 (0 = inline), got {workers}")
    return min(workers, n_items)


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` map (the argmax prediction) as a PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="PNG")
    return path


def _context():
    """fork where the platform has it (starts in milliseconds, needs no ``__main__`` guard in the caller's
    script), else spawn."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: one intra-op thread if torch came with the fork (as DataLoader workers do: a
    forked OpenMP pool is unusable), and a daemon thread that ends this process once ``parent`` is gone."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(ORPHAN_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="oodseg-orphan-watch", daemon=True).start()


def _write_each(jobs: Sequence[tuple[Callable[..., Any], str | os.PathLike, tuple]]) -> None:
    """Writer job of :meth:`WriterPool.submit_batch`: each ``write(path, *args)`` in order; an exception other
    than OodsegError (OSError: disk full, permission) becomes one line naming its file."""
    for write, path, args in jobs:
        try:
            write(path, *args)
        except OodsegError:
            raise
        except Exception as exc:
            raise OodsegError(f"{path}: writing failed ({one_line(exc)})") from exc


class WriterPool:
    """``workers`` writer processes (0: write inline, in the caller) with at most ``max_pending`` jobs in flight.

    Use as a context manager: a clean exit waits for every write; an exception cancels the queued
    jobs and waits for the running ones before it propagates.
    """

    def __init__(self, workers: int, max_pending: int | None = None):
        if workers < 0:
            raise OodsegError(f"workers: must be >= 0, got {workers}")
        self.workers = workers
        self.max_pending = max(1, max_pending if max_pending is not None else 2 * workers)
        self._pending: collections.deque[tuple[Future, str]] = collections.deque()
        self._executor = None
        if workers:
            self._executor = ProcessPoolExecutor(workers, mp_context=_context(), initializer=_exit_with_parent,
                                                 initargs=(os.getpid(),))

    def submit_batch(self, jobs: Sequence[tuple[Callable[..., Any], str | os.PathLike, tuple]]) -> None:
        """Run ``write(path, *args)`` for each ``(write, path, args)`` of ``jobs`` in order, in one writer
        (``write``: a top-level function, pickled by name): one transfer and one place in the queue for them
        all (8 single jobs cost the caller ~5× the CPU); a failure names its own file."""
        if self._executor is None:
            _write_each(jobs)
        elif jobs:
            self._wait_for_room()
            self._pending.append((self._executor.submit(_write_each, list(jobs)), str(jobs[0][1])))

    def drain(self) -> None:
        """Wait for every submitted write; raise the first failure."""
        while self._pending:
            self._wait_oldest()

    def close(self, cancel: bool = False) -> None:
        """Stop the writer processes (after the running writes); ``cancel`` drops queued jobs."""
        if self._executor is not None:
            if cancel:
                for future, _ in self._pending:
                    future.cancel()
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None
            self._pending.clear()

    def __enter__(self) -> "WriterPool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.drain()
            except BaseException:
                self.close(cancel=True)
                raise
        self.close(cancel=exc_type is not None)

    def _wait_for_room(self) -> None:
        while len(self._pending) >= self.max_pending:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, path = self._pending.popleft()
        try:
            future.result()
        except OodsegError:
            raise
        except Exception as exc:  # a writer's OSError, or a writer process that died (BrokenProcessPool)
            raise OodsegError(f"{path}: writing failed ({one_line(exc)})") from exc


def map_chunks(work: Callable[[list[T]], R], items: Sequence[T], workers: int, description: str) -> list[R]:
    """``[work(chunk) for chunk in chunks]`` over contiguous chunks of ``items`` (in order, about four per
    worker so that frames of unequal cost balance, at least :data:`MIN_CHUNK` items each unless that would
    leave a worker idle), computed by ``workers`` processes; 0: inline.

    ``work`` and its bound arguments are pickled (a top-level function or a ``functools.partial`` of one).
    """
    items = list(items)
    if not items:
        return []
    # about four chunks per worker, each of at least MIN_CHUNK items (a chunk's metric states cost ~10 ms)
    n_chunks = max(min(len(items), workers), min(len(items) // MIN_CHUNK, 4 * max(workers, 4)), 1)
    bounds = [round(k * len(items) / n_chunks) for k in range(n_chunks + 1)]
    chunks = [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if not workers:
        return [work(chunk) for chunk in track(chunks, description)]
    with ProcessPoolExecutor(min(workers, n_chunks), mp_context=_context(),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as executor:
        try:
            return list(track(executor.map(work, chunks), description, total=len(chunks)))
        except BaseException:
            executor.shutdown(wait=True, cancel_futures=True)
            raise
