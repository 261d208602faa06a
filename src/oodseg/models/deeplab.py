"""DeepLabv3+ (Chen et al. 2018) with a dilated ResNet backbone, in pure torch."""
from __future__ import annotations

from oodseg.models.blocks import ASPP, Decoder, EncoderDecoderSegNet
from oodseg.models.resnet import ResNetBackbone

#: ASPP dilation rates per output stride (DeepLabv3: 6/12/18 at stride 16, doubled at 8).
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


class DeepLabV3Plus(EncoderDecoderSegNet):
    """DeepLabv3+: ResNet backbone (dilated to ``output_stride``), ASPP, decoder with stride-4
    skip ending in ``conv3×3 → BN → ReLU → Dropout2d``, and a 1×1 ``classifier``.

    Input (B, 3, H, W) floats in [0, 1]; output logits (B, num_classes, H, W). The classifier
    runs at stride 4 with ``decoder_channels`` input features. No pretrained weights.
    """

    def __init__(self, num_classes: int = 19, backbone: str = "resnet50", output_stride: int = 16,
                 dropout: float = 0.1, aspp_channels: int = 256, low_channels: int = 48,
                 decoder_channels: int = 256):
        net = ResNetBackbone(backbone, output_stride)
        aspp = ASPP(net.high_channels, aspp_channels, ASPP_RATES[output_stride])
        decoder = Decoder(net.low_channels, low_channels, aspp_channels, decoder_channels, num_convs=2, dropout=dropout)
        super().__init__(net, aspp, decoder, decoder_channels, num_classes)
        self.output_stride = output_stride
