"""Timing helper shared by the benchmark scripts (wall-clock medians; the machine may be shared)."""
import statistics
import time


def median_time(work, repeats: int, warmup: bool = False) -> float:
    """Median wall-clock seconds of ``work()`` over ``repeats`` calls (after one untimed call if ``warmup``)."""
    if warmup:
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
