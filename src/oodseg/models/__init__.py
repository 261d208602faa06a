"""Pure-torch segmentation networks, an architecture registry and safetensors checkpoints.

>>> from oodseg.models import build_model, save_checkpoint, load_checkpoint
>>> model = build_model("small", num_classes=19)          # or "deeplabv3plus", backbone="resnet50"
>>> wv3 = build_model("deepwv3plus", num_classes=19)      # the seeds' networks: also "deepwv3plus-rpl",
...                                                        # "deepwv3plus-th", "ldn121"
>>> save_checkpoint(model, "ckpt", "small", {"num_classes": 19})
>>> model, meta = load_checkpoint("ckpt")
>>> import_checkpoint("cityscapes_best.pth", "ckpt/nvidia")  # a seed paper's published file (oodseg import)
>>> model, meta = load_model_source("hf:segformer")        # any model source (docs/models.md)
>>> import_model_source("python:mynets:build?weights=best.pth", "ckpt/mynet")
"""
from oodseg.classes import CITYSCAPES_CLASSES
from oodseg.models.blocks import ASPP, Decoder, EncoderDecoderSegNet, ImageNormalize
from oodseg.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from oodseg.models.deeplab import DeepLabV3Plus
from oodseg.models.deepwv3 import DeepWV3Plus, DeepWV3PlusRPL, DeepWV3PlusTH
from oodseg.models.importing import import_checkpoint
from oodseg.models.ldn import LDN121
from oodseg.models.registry import available_architectures, build_model, register_architecture
from oodseg.models.resnet import ResNetBackbone
from oodseg.models.small import SmallSegNet
from oodseg.models.sources import ModelSource, import_model_source, load_model_source, parse_model_source

__all__ = [
    "ASPP", "CITYSCAPES_CLASSES", "Decoder", "DeepLabV3Plus", "DeepWV3Plus", "DeepWV3PlusRPL", "DeepWV3PlusTH",
    "EncoderDecoderSegNet", "ImageNormalize", "LDN121", "ModelSource", "ResNetBackbone", "SmallSegNet",
    "available_architectures", "build_model", "import_checkpoint", "import_model_source", "load_checkpoint",
    "load_model_source", "parse_model_source",
    "read_checkpoint_meta", "register_architecture", "save_checkpoint",
]
