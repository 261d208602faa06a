"""Randomly initialised SmallSegNet checkpoints whose predictions are confident and varied (score tests)."""
import torch

from oodseg.models import build_model, save_checkpoint


def confident_checkpoint(path, config: dict, seed: int = 0, nan_bias: bool = False):
    """Save a ``small`` model built from ``config`` with random BN statistics and a 20× classifier to ``path``."""
    torch.manual_seed(seed)
    model = build_model("small", **config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
        model.classifier.weight.mul_(20)  # confident, varied predictions
        if nan_bias:
            model.classifier.bias[0] = float("nan")
    save_checkpoint(model, path, "small", config)
    return path
