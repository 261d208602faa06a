"""The DenseHybrid score against a hand-written numpy reference (Grcić et al. 2022, their
evaluations/evaluations.py: −logsumexp(l) + log softmax(l_ood)[1])."""
import numpy as np
import pytest
import torch

from oodseg import scores
from oodseg.adapter import SegOutput
from oodseg.errors import OodsegError
from oodseg.scores.base import TILE_PIXELS


def _reference(logits: np.ndarray, ood: np.ndarray) -> np.ndarray:
    """Per pixel, in float64 with explicit loops over classes: −log Σ_c exp(l_c) + log(e^{o_1} / (e^{o_0} + e^{o_1}))."""
    m = logits.max(axis=1)
    lse = m + np.log(sum(np.exp(logits[:, c] - m) for c in range(logits.shape[1])))
    log_p_outlier = ood[:, 1] - np.logaddexp(ood[:, 0], ood[:, 1])
    return -lse + log_p_outlier


def test_densehybrid_matches_the_reference_across_tiles(rng):
    width = 4096  # several rows per tile → the map is computed in 3 tiles of rows
    height = 2 * (TILE_PIXELS // width) + 3
    logits = rng.normal(size=(2, 5, height, width)) * 4
    ood = rng.normal(size=(2, 2, height, width)) * 3
    out = SegOutput(logits=torch.from_numpy(logits).float(), extras={"ood_logits": torch.from_numpy(ood).float()})
    got = scores.get("densehybrid")(out)
    assert got.shape == (2, height, width) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _reference(logits.astype(np.float32).astype(np.float64),
                                                       ood.astype(np.float32).astype(np.float64)),
                               rtol=1e-5, atol=1e-4)


def test_densehybrid_is_finite_where_the_sources_softmax_underflows():
    logits = torch.zeros(1, 3, 1, 2)
    ood = torch.tensor([[[[200.0, 0.0]], [[-200.0, 0.0]]]])  # p(outlier) = e^-400 underflows in float32
    got = scores.get("densehybrid")(SegOutput(logits=logits, extras={"ood_logits": ood}))
    np.testing.assert_allclose(got.numpy()[0, 0], [-np.log(3) - 400.0, -np.log(3) - np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("extras, message", [
    ({}, r"SegOutput.extras\['ood_logits'\]: missing"),
    ({"ood_logits": torch.zeros(1, 3, 4, 4)}, "2 channels"),
    ({"ood_logits": torch.zeros(1, 2, 2, 4)}, "does not match logits"),
    ({"ood_logits": torch.full((1, 2, 4, 4), float("nan"))}, "ood_logits"),
])
def test_densehybrid_needs_a_matching_ood_head(extras, message):
    out = SegOutput(logits=torch.zeros(1, 3, 4, 4), extras=extras)
    with pytest.raises(OodsegError, match=message):
        scores.get("densehybrid")(out)
