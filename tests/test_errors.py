"""oodseg.errors: the one-line error helpers."""
import pytest

from oodseg.errors import OodsegError, check_choice


def test_check_choice_returns_the_value_or_names_the_argument_and_choices():
    assert check_choice("mode", "exact", ("exact", "streaming")) == "exact"
    with pytest.raises(OodsegError, match=r"^mode: expected one of exact, streaming, got 'fast'$"):
        check_choice("mode", "fast", ("exact", "streaming"))
    with pytest.raises(OodsegError, match=r"^track: expected one of anomaly, obstacle, got 3$"):
        check_choice("track", 3, sorted({"obstacle": 1, "anomaly": 2}))
