"""OoD-aware training as a library: recipes (a loss + a data recipe each) and their settings.

:func:`make_config` assembles a :class:`TrainConfig` for a recipe registered in :data:`RECIPES`
(``baseline``, ``entropy-max``, ``nflowjs``, ``rpl``); the loop that runs it is
:func:`oodseg.workflows.train.train`. Losses live in :mod:`.losses`, outlier pasting/mixing in
:mod:`.outliers`.
"""
from oodseg.training.config import TrainConfig, make_config
from oodseg.training.recipe import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "TrainConfig", "get_recipe", "make_config"]
