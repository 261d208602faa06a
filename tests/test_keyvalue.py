"""One KEY=VALUE parser for every option: the value rule (JSON literal, else stripped text) on hand-written
items, every form the CLI accepted before, the one-line errors, and the check of keys and types against a signature."""
from typing import Sequence

import pytest

from oodseg.errors import OodsegError
from oodseg.keyvalue import check_keywords, parse_pairs, parse_scoped, parse_value


@pytest.mark.parametrize("text, expected", [
    ("0.5", 0.5), ("1e-3", 0.001), ("2", 2), ("true", True), ("false", False), ("null", None),
    ("[8,16,32]", [8, 16, 32]), ('{"a": 1}', {"a": 1}), ('"0.5"', "0.5"), ("mix", "mix"), (" mix ", "mix"),
    ("0:0,1:1,255:255", "0:0,1:1,255:255"), ("resnet50", "resnet50"), ("", ""), ("a=b", "a=b"),
])
def test_value_rule(text, expected):
    got = parse_value(text)
    assert got == expected and type(got) is type(expected)


def test_pairs_train_and_arch_forms():
    got = parse_pairs(["lam=0.9", "mode=paste", "widths=[24,48,96,128]", " head_resolution =false", "x=1", "x=2",
                       "expr=a=b"], "--param")
    assert got == {"lam": 0.9, "mode": "paste", "widths": [24, 48, 96, 128], "head_resolution": False, "x": 2,
                   "expr": "a=b"}


def test_dataset_options_stay_text():
    got = parse_pairs(["split=testNoKnown", "mapping=0:0,1:1", "city=1", " labels = available "], "--option",
                      value=str.strip)
    assert got == {"split": "testNoKnown", "mapping": "0:0,1:1", "city": "1", "labels": "available"}


def test_scoped_score_params():
    got = parse_scoped(["odin.epsilon=0.002", "pgn.label=uniform", "odin.temperature=1000", "n_energy_cw.eta=1.5"],
                       "--param", "METHOD", "odin.epsilon=0.002")
    assert got == {"odin": {"epsilon": 0.002, "temperature": 1000}, "pgn": {"label": "uniform"},
                   "n_energy_cw": {"eta": 1.5}}


@pytest.mark.parametrize("item", ["lam", "=3", " =3"])
def test_pair_errors(item):
    with pytest.raises(OodsegError, match=r"^--arch-param: expected KEY=VALUE, got "):
        parse_pairs([item], "--arch-param")


@pytest.mark.parametrize("item", ["odin=1", "odin.=1", ".epsilon=1", "odin.epsilon"])
def test_scoped_errors(item):
    with pytest.raises(OodsegError, match=r"^--param '.*': expected METHOD.KEY=VALUE, e.g. odin.epsilon=0.002$"):
        parse_scoped([item], "--param", "METHOD", "odin.epsilon=0.002")


def _factory(lam: float = 0.5, steps: int = 3, flag: bool = True, mode: str = "paste",
             widths: Sequence[int] = (8, 16), size: tuple[float, float] = (0.1, 0.4), rate: float | None = None):
    """A stand-in for a recipe or architecture constructor."""


@pytest.mark.parametrize("params", [
    {}, {"lam": 1}, {"lam": 0.25, "steps": 2, "flag": False, "mode": "mix"}, {"widths": [4, 8, 16]},
    {"size": [0.2, 0.3]}, {"rate": None}, {"rate": 0.5}, {"widths": (1, 2)},
])
def test_check_keywords_accepts_values_of_the_annotated_types(params):
    check_keywords("--param", _factory, params)


@pytest.mark.parametrize("params, message", [
    ({"lam": "abc"}, "--param: lam expects float, got 'abc'"),
    ({"steps": 2.5}, "--param: steps expects int, got 2.5"),
    ({"steps": True}, "--param: steps expects int, got True"),
    ({"flag": 1}, "--param: flag expects bool, got 1"),
    ({"widths": "abc"}, "--param: widths expects list[int], got 'abc'"),
    ({"widths": [8, "x"]}, "--param: widths expects list[int], got [8, 'x']"),
    ({"size": [0.1]}, "--param: size expects [float, float], got [0.1]"),
    ({"rate": "high"}, "--param: rate expects float | null, got 'high'"),
    ({"foo": 1, "bar": 2}, "--param: unknown key(s) bar, foo; valid keys: lam (float), steps (int), flag (bool), "
                           "mode (str), widths (list[int]), size ([float, float]), rate (float | null)"),
])
def test_check_keywords_names_the_key_and_the_expected_type(params, message):
    with pytest.raises(OodsegError) as error:
        check_keywords("--param", _factory, params)
    assert str(error.value) == message


def test_check_keywords_passes_unknown_keys_to_a_factory_with_kwargs_unless_closed():
    def factory(width: int = 2, **rest):
        """Takes any further key."""

    check_keywords("x", factory, {"depth": 3})
    with pytest.raises(OodsegError, match="x: unknown key.s. depth; valid keys: width .int.$"):
        check_keywords("x", factory, {"depth": 3}, closed=True)
