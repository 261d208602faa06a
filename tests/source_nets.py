"""User-side networks for the model-source tests (imported by ``python:source_nets:...`` in a subprocess too).

``build_split_net`` is what a user brings: its 1×1 classifier is not its last module (an auxiliary
1×1 head is registered and runs after it, and an upsampling module follows the classifier), it
returns a dict ``{"seg", "aux"}`` (neither ``logits`` nor ``out``), and it was trained on ImageNet-
normalised input, which it does NOT apply itself (the user's data pipeline did).
"""
import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class SplitNet(nn.Module):
    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.aux = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        features = self.block(self.stem(x))
        return {"seg": self.upsample(self.classifier(features)), "aux": self.aux(features)}


def build_split_net(num_classes: int = 4, width: int = 8) -> SplitNet:
    """The factory a ``python:`` source names; random BatchNorm statistics make the normalisation visible."""
    net = SplitNet(num_classes, width)
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return net.eval()


def broken_factory(num_classes: int = 4):
    """A factory that fails the way user code does."""
    raise ValueError(f"width must be a multiple of 8, got {num_classes}")


class TorchvisionLike(nn.Module):
    """The output layout of torchvision's segmentation models: {"out": full-resolution logits, "aux": ...}."""

    def __init__(self, num_classes: int = 21):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, num_classes, 1)
        self.aux_classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        features = self.backbone(x)
        upsample = lambda t: nn.functional.interpolate(t, size=x.shape[-2:], mode="bilinear",  # noqa: E731
                                                       align_corners=False)
        return {"out": upsample(self.classifier(features)), "aux": upsample(self.aux_classifier(features))}
