"""Mean ± std over seeds and the "beats the baseline" rule, against hand-computed values (and numpy's ddof=1 std)."""
import math

import numpy as np
import pytest

from oodseg.errors import OodsegError
from oodseg.report.seeds import (Spread, beats, format_spread, parse_seeds, seed_tables, seeds_better, seeds_json,
                                 seeds_markdown, spread)
from oodseg.report.tables import PIXEL_COLUMNS, RankingTable


def test_spread_is_mean_and_sample_std():
    # 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (3 - 1) = 7/3
    value = spread([1.0, 2.0, 4.0])
    assert value.n == 3 and value.mean == pytest.approx(7 / 3) and value.std == pytest.approx(math.sqrt(7 / 3))
    assert value.std == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert spread([0.5, None, float("nan")]) == Spread(0.5, None, 1)  # missing values are left out
    assert spread([]) == Spread(None, None, 0)
    assert spread([0.2, 0.2]) == Spread(0.2, 0.0, 2)


def test_beats_needs_disjoint_one_std_intervals():
    reference = Spread(0.25, 0.02, 3)                              # interval [0.23, 0.27]
    assert beats(Spread(0.30, 0.01, 3), reference) is True         # 0.29 > 0.27
    assert beats(Spread(0.28, 0.01, 3), reference) is False        # 0.27 is not above 0.27
    assert beats(Spread(0.40, 0.20, 3), reference) is False        # higher mean, but 0.20 < 0.27
    fpr = Spread(0.15, 0.02, 3)                                     # lower is better: [0.13, 0.17]
    assert beats(Spread(0.10, 0.01, 3), fpr, higher_is_better=False) is True   # 0.11 < 0.13
    assert beats(Spread(0.12, 0.02, 3), fpr, higher_is_better=False) is False  # 0.14 > 0.13
    assert beats(Spread(0.5, None, 1), reference) is None           # one seed: no claim


def test_seeds_better_is_paired_by_position():
    assert seeds_better([0.3, 0.2, 0.5], [0.25, 0.25, 0.5]) == 1
    assert seeds_better([0.1, 0.2, 0.5], [0.25, 0.25, 0.5], higher_is_better=False) == 2
    with pytest.raises(ValueError):
        seeds_better([0.1], [0.1, 0.2])


def _table(dataset, rows):
    labels = tuple(rows)
    values = tuple(tuple(rows[label]) for label in labels)
    return RankingTable(dataset, PIXEL_COLUMNS, labels, values, tuple(frozenset() for _ in PIXEL_COLUMNS))


def test_seed_tables_aggregate_per_dataset_method_and_column():
    per_seed = {
        0: [_table("anomaly", {"entropy": (0.20, 0.80, 0.40), "msp": (0.10, 0.70, 0.50)})],
        1: [_table("anomaly", {"entropy": (0.30, 0.90, 0.30), "msp": (0.14, 0.72, 0.52)})],
        2: [_table("anomaly", {"entropy": (0.25, 0.85, 0.35)})],   # msp missing on seed 2
    }
    (table,) = seed_tables(per_seed)
    assert table.dataset == "anomaly" and table.seeds == (0, 1, 2) and table.labels == ("entropy", "msp")
    entropy, msp = table.cells
    assert entropy[0].mean == pytest.approx(0.25) and entropy[0].std == pytest.approx(0.05) and entropy[0].n == 3
    assert entropy[2].mean == pytest.approx(0.35) and entropy[2].std == pytest.approx(0.05)
    # msp AP over 2 seeds: mean 0.12, std |0.14 - 0.10| / sqrt(2)
    assert msp[0].n == 2 and msp[0].mean == pytest.approx(0.12) and msp[0].std == pytest.approx(0.04 / math.sqrt(2))
    text = seeds_markdown([table])
    assert "| entropy | 25.00 ± 5.00 | 85.00 ± 5.00 | 35.00 ± 5.00 |" in text
    assert "mean ± std over seeds 0, 1, 2" in text
    assert "| msp | 12.00 ± 2.83 (n=2) |" in text   # 0.04 / sqrt(2) = 0.0283
    data = seeds_json([table])
    assert data["schema"] == "oodseg.seeds"
    assert data["tables"][0]["rows"][1]["AP"] == {"mean": pytest.approx(0.12), "std": pytest.approx(0.04 / math.sqrt(2)),
                                                  "n": 2}


def test_format_spread():
    assert format_spread(Spread(0.1737, 0.0052, 3)) == "17.37 ± 0.52"
    assert format_spread(Spread(0.1737, None, 1)) == "17.37"
    assert format_spread(Spread(None, None, 0)) == "—"
    assert format_spread(Spread(0.01234, 0.0001, 2), percent=False) == "0.0123 ± 0.0001"


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 3 ") == [3]
    for bad in ("0,0", "-1", "a,b", ""):
        with pytest.raises(OodsegError, match="distinct non-negative integers"):
            parse_seeds(bad)
