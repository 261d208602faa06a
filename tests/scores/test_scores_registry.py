"""Scores register by declaration: defining a class with a ``name`` is enough, none can be left out."""
import pytest
import torch

from oodseg import scores
from oodseg.adapter import SegOutput
from oodseg.scores.base import REGISTRY, FittedScorer, ModelScorer, Scorer


def test_every_declared_scorer_is_available_in_spec_order():
    declared = {cls.name for cls in _subclasses(Scorer) if cls.__dict__.get("name")}
    assert set(scores.available()) == declared and len(declared) == 23  # SPEC §1 + densehybrid (§8) + §9
    assert scores.available()[:3] == ["msp", "entropy", "variation_ratio"]


def test_a_new_class_registers_itself_and_is_listed_last():
    class Constant(Scorer):
        name = "test_constant"

        def score(self, inputs):
            return torch.zeros(inputs.logits.shape[0], *inputs.logits.shape[2:])

    try:
        assert scores.available()[-1] == "test_constant"
        out = scores.get("test_constant")(SegOutput(logits=torch.randn(1, 3, 2, 2)))
        assert out.shape == (1, 2, 2) and not out.any()
        with pytest.raises(TypeError, match="declared by"):
            type("Other", (Scorer,), {"name": "test_constant"})
    finally:
        del REGISTRY["test_constant"]


def test_fitted_and_model_questions_have_one_answer_each():
    member = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    for name in scores.available():
        scorer = scores.get(name, models=[member]) if name == "ensemble" else scores.get(name)
        assert scorer.needs_fit == isinstance(scorer, FittedScorer) == (name in ("sml", "mahalanobis", "maskomaly"))
        assert scorer.runs_model == isinstance(scorer, ModelScorer) == (name in ("mc_dropout", "ensemble", "odin"))


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)
