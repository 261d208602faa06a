"""Published-checkpoint writers (each source's own saving layout) and small stand-in networks.

The writers reproduce what the seed repositories' saving code puts in a file (reference/seed-networks.md
§2.5, §3.1-3.3): the top-level dict, the ``module.`` / ``branch1.`` prefixes, NVIDIA's criterion key, numpy
float64 scalars, real optimizer state. The stand-ins have the published key *pattern* of each
architecture (BatchNorm inside ``Sequential`` as ``.0``, bias-free ``final.6``, ``logits.conv`` with a
bias, the RPL residual block and CoroCL projector, the DenseHybrid OoD head) at a few channels, so the
format tests run in milliseconds; full-size imports use the real architectures.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from oodseg.models.blocks import IMAGENET_MEAN, IMAGENET_STD
from oodseg.models.source import SourceConventions

NVIDIA_CRITERION_KEY = "module.criterion.nll_loss.weight"


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


class _Block(nn.Module):
    """Pre-activation block with the WRN38 key names (``bn1.0``, ``convs.conv1``, ``convs.bn2.0``, ``proj_conv``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn1 = _bn_relu(cin)
        self.convs = nn.Sequential(OrderedDict(conv1=nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                               bn2=_bn_relu(cout),
                                               conv2=nn.Conv2d(cout, cout, 3, padding=1, bias=False)))
        self.proj_conv = nn.Conv2d(cin, cout, 1, bias=False)


class TinyWV3(SourceConventions, nn.Module):
    """DeepWV3Plus key pattern: ``mod1.conv1``, ``mod2.block1.*``, ``bot_fine``, ``final.{0,1,3,4,6}``."""

    align_corners = True
    normalization = (IMAGENET_MEAN, IMAGENET_STD)
    output_stride = 2
    head_name = "final.6"

    def __init__(self, num_classes: int = 19, width: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.mod1 = nn.Module()
        self.mod1.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.mod2 = nn.Module()
        self.mod2.block1 = _Block(width, width)
        self.bot_fine = nn.Conv2d(width, width, 1, bias=False)
        self.final = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, num_classes, 1, bias=False))
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1), persistent=False)  # like a normalisation constant


class TinyRPL(TinyWV3):
    """RPL key pattern: the DeepWV3Plus keys plus ``residual_block.*`` (CoroCL: ``residual_block.proj_head``)."""

    def __init__(self, num_classes: int = 19, projector: bool = False, width: int = 4):
        super().__init__(num_classes, width)
        self.residual_block = nn.Module()
        self.residual_block.atten_aspp = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.residual_block.bot_atten_aspp = nn.Conv2d(width, width, 1, bias=False)
        self.residual_block.atten_aspp_final = nn.Conv2d(width, width, 1, bias=False)
        if projector:
            self.residual_block.proj_head = nn.Module()
            self.residual_block.proj_head.proj = nn.Sequential(nn.Conv2d(width, width, 1))


class _BNReluConv(nn.Module):
    def __init__(self, cin: int, cout: int, bias: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=bias)


class TinyWV3TH(TinyWV3):
    """DenseHybrid DeepWV3PlusTH key pattern: the DeepWV3Plus keys plus ``logits_ood.{norm,conv}``."""

    def __init__(self, num_classes: int = 19, width: int = 4):
        super().__init__(num_classes, width)
        self.logits_ood = _BNReluConv(width, 2)


class TinyLDN(SourceConventions, nn.Module):
    """LDN-121 key pattern: ``backbone.features.conv0``/``norm0``, ``logits.conv`` (with bias), ``logits_ood``."""

    output_stride = 4
    head_name = "logits.conv"

    def __init__(self, num_classes: int = 19, width: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Module()
        self.backbone.features = nn.Sequential(OrderedDict(conv0=nn.Conv2d(3, width, 7, bias=False),
                                                           norm0=nn.BatchNorm2d(width)))
        self.logits = _BNReluConv(width, num_classes)
        self.logits_ood = _BNReluConv(width, 2)


STANDINS = {"deepwv3plus": TinyWV3, "deepwv3plus-rpl": TinyRPL, "deepwv3plus-th": TinyWV3TH, "ldn121": TinyLDN}


def trained_state(model: nn.Module) -> OrderedDict:
    """``model.state_dict()`` with every entry random (BN counters small ints), as after training."""
    generator = torch.Generator().manual_seed(1)
    state = OrderedDict()
    for key, value in model.state_dict().items():
        if value.dtype == torch.int64:
            state[key] = torch.randint(1, 1000, value.shape, generator=generator)
        else:
            state[key] = torch.rand(value.shape, generator=generator) + 0.1
    return state


def _stepped(optimizer: torch.optim.Optimizer, params) -> torch.optim.Optimizer:
    """``optimizer`` after one step with non-zero gradients (so its state holds momentum/moment buffers)."""
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    return optimizer


def _loaded(model: nn.Module, state: OrderedDict) -> list[nn.Parameter]:
    model.load_state_dict(state)
    return list(model.parameters())


def nvidia_checkpoint(model: nn.Module, state: OrderedDict) -> dict:
    """NVIDIA sdcnet ``utils/misc.py``: DataParallel keys + criterion weight, SGD (LambdaLR's initial_lr),
    ``epoch``, ``mean_iu`` (numpy.float64 from np.nanmean), ``command``."""
    params = _loaded(model, state)
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: (1 - epoch / 175) ** 1.0)
    wrapped = OrderedDict((f"module.{k}", v) for k, v in state.items())
    wrapped[NVIDIA_CRITERION_KEY] = torch.ones(19)
    return {"state_dict": wrapped, "optimizer": _stepped(optimizer, params).state_dict(), "epoch": 174,
            "mean_iu": np.nanmean(np.array([0.9, np.nan, 0.8])), "command": "python train.py --dataset cityscapes"}


def meta_ood_checkpoint(model: nn.Module, state: OrderedDict) -> dict:
    """Meta-OoD ``ood_training.py``: ``epoch``, DataParallel ``state_dict``, Adam state, last ``loss`` tensor."""
    params = _loaded(model, state)
    loss = (params[0] * 2).sum()  # non-leaf, requires_grad, as the training loop leaves it
    return {"epoch": 4, "state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
            "optimizer_state_dict": _stepped(torch.optim.Adam(params, lr=1e-5), params).state_dict(), "loss": loss}


def smiyc_checkpoint(model: nn.Module, state: OrderedDict) -> dict:
    """SMIYC ``…_baseline.pth`` as its reader uses it: ``ckpt['state_dict']`` with DataParallel keys."""
    return {"state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items())}


def rpl_checkpoint(model: nn.Module, state: OrderedDict) -> dict:
    """RPL ``engine/engine.py``: ``model`` with ``branch1.`` keys, Adam whose ``lr`` is a numpy.float64
    (WarmUpPolyLR), ``epoch``, ``iteration``."""
    params = _loaded(model, state)
    optimizer = _stepped(torch.optim.Adam(params, lr=7.5e-5), params)
    for group in optimizer.param_groups:
        group["lr"] = np.real(np.clip(np.float64(7.5e-5) * 0.99, 0.0, None))
    return {"model": OrderedDict((f"branch1.{k}", v) for k, v in state.items()),
            "optimizer": optimizer.state_dict(), "epoch": 40, "iteration": 12000}


def bare_checkpoint(model: nn.Module, state: OrderedDict) -> OrderedDict:
    """DenseHybrid ``experiments/base.py``: the bare ``model.state_dict()``."""
    return OrderedDict(state)


def write(obj, path: Path, legacy: bool) -> Path:
    """``torch.save`` in the legacy (PyTorch < 1.6) or the zip serialization."""
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def without_batch_counters(state: OrderedDict) -> OrderedDict:
    return OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
