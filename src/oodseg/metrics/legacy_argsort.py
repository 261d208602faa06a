"""Which element numpy 1.23's ``np.argsort`` (default quicksort) puts last — its tie-breaking, reproduced.

The official SegmentMeIfYouCan curve starts with the element that ``np.argsort(t)[::-1]``
puts first; when several elements share the maximum, which one that is depends on
numpy's introsort (numpy 1.23 for float64 arrays: median-of-3 quicksort, insertion sort of
segments of at most 16 elements, heapsort past ``2·floor(log2 n)`` levels). numpy 2 sorts float64 with
SIMD code and breaks ties differently, so calling ``np.argsort`` cannot reproduce it.

Only the partition holding the last position is followed (each step keeps the right part),
so the cost is O(n) on average instead of a full sort.
"""
from __future__ import annotations

import numpy as np

_SMALL_QUICKSORT = 15


def _heap_root(values: np.ndarray, idx: list[int]) -> int:
    """Element at the root after numpy's ``aheapsort`` builds its max-heap (the one it places last)."""
    a = [0] + idx  # 1-based, as numpy's heapsort
    n = len(idx)
    for start in range(n >> 1, 0, -1):
        tmp = a[start]
        i, j = start, start << 1
        while j <= n:
            if j < n and values[a[j]] < values[a[j + 1]]:
                j += 1
            if values[tmp] < values[a[j]]:
                a[i] = a[j]
                i, j = j, j + j
            else:
                break
        a[i] = tmp
    return a[1]


def argsort_last(values: np.ndarray) -> int:
    """Index that numpy 1.23's ``np.argsort(values)`` (kind ``quicksort``) returns last; finite float64 (n,)."""
    v = np.asarray(values, dtype=np.float64).tolist()
    n = len(v)
    if n == 0:
        raise ValueError("argsort_last of an empty array")
    idx = list(range(n))
    pl, pr = 0, n - 1
    depth = (n.bit_length() - 1) * 2
    while True:  # each pass: a segment popped from numpy's stack, whose depth is checked first
        if depth < 0:
            return _heap_root(v, idx[pl:pr + 1])
        while pr - pl > _SMALL_QUICKSORT:
            pm = pl + ((pr - pl) >> 1)
            if v[idx[pm]] < v[idx[pl]]:
                idx[pm], idx[pl] = idx[pl], idx[pm]
            if v[idx[pr]] < v[idx[pm]]:
                idx[pr], idx[pm] = idx[pm], idx[pr]
            if v[idx[pm]] < v[idx[pl]]:
                idx[pm], idx[pl] = idx[pl], idx[pm]
            vp = v[idx[pm]]
            pi, pj = pl, pr - 1
            idx[pm], idx[pj] = idx[pj], idx[pm]
            while True:
                pi += 1
                while v[idx[pi]] < vp:
                    pi += 1
                pj -= 1
                while vp < v[idx[pj]]:
                    pj -= 1
                if pi >= pj:
                    break
                idx[pi], idx[pj] = idx[pj], idx[pi]
            idx[pi], idx[pr - 1] = idx[pr - 1], idx[pi]
            depth -= 1
            right_is_pushed = pi - pl < pr - pi  # numpy continues with the smaller part
            pl = pi + 1
            if right_is_pushed:
                break
        else:
            # insertion sort of [pl, pr] moves an element only past strictly larger ones (stable):
            # among the maxima, the right-most ends last
            segment = idx[pl:pr + 1]
            top = max(v[i] for i in segment)
            return next(i for i in reversed(segment) if v[i] == top)
