"""Which features matter: LARS feature ranking (least angle regression, ``sklearn.linear_model.lars_path``).

Features are z-scored and the target centred; the rank of a feature is the step at which it
enters the active set (1 = most correlated with the target). Features that never enter
(e.g. constant ones) get no rank.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import lars_path
from sklearn.preprocessing import StandardScaler

from oodseg.errors import OodsegError


def lars_ranking(X: np.ndarray, y: np.ndarray, names: list[str], max_features: int | None = None) -> list[tuple[str, int]]:
    """``[(feature name, rank), ...]`` in order of entry into the LARS path (rank 1 first)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(names) or len(y) != X.shape[0]:
        raise OodsegError(f"lars_ranking: X {X.shape}, y {y.shape} and {len(names)} names do not fit together")
    if X.shape[0] < 2 or np.ptp(y) == 0:
        return []
    Xs = StandardScaler().fit_transform(X)
    _, active, _ = lars_path(Xs, y - y.mean(), method="lar", max_iter=max_features or X.shape[1])
    return [(names[j], rank) for rank, j in enumerate(active, start=1)]
