"""Randomly initialised SmallSegNet checkpoints whose predictions are confident and varied (score tests),
and random BatchNorm statistics for any network (adapter tests)."""
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


def randomise_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random running statistics and affine parameters in every BatchNorm2d (not the identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model
