"""One KEY=VALUE parser for every option: the value rule (JSON literal, else stripped text) on hand-written
items, every form the CLI accepted before, and the one-line errors."""
import pytest

from oodseg.errors import OodsegError
from oodseg.keyvalue import parse_pairs, parse_scoped, parse_value


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
