"""OoD-aware training: one loop (:mod:`.trainer`) and recipes (a loss + a data recipe each).

``train(config)`` runs a recipe registered in :data:`RECIPES` (``baseline``, ``entropy-max``,
``nflowjs``, ``rpl``); losses live in :mod:`.losses`, outlier pasting/mixing in :mod:`.outliers`.
"""
from oodseg.training.trainer import RECIPES, Recipe, TrainConfig, get_recipe, make_config, train

__all__ = ["RECIPES", "Recipe", "TrainConfig", "get_recipe", "make_config", "train"]
