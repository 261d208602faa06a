"""RPLModel attaches to any network by hooks: the published layout on a DeepWV3Plus-shaped network."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from oodseg.adapter import ModelAdapter
from oodseg.errors import OodsegError
from oodseg.models.blocks import ConvBNReLU
from oodseg.models.deepwv3 import ConcatASPP
from oodseg.models.rpl import RPLModel
from oodseg.models.source import SourceConventions


class MiniWV3(SourceConventions, nn.Module):
    """DeepWV3Plus's layout at a few channels: trunk → ConcatASPP → bot_aspp, fine skip at stride 2,
    ``final`` = conv-BN-ReLU ×2 → 1×1 ``final.6`` (no bias), logits upsampled with align_corners=True."""

    align_corners = True
    head_name = "final.6"
    rpl_residual_module = "final"

    def __init__(self):
        super().__init__()
        self.stem = ConvBNReLU(3, 6, stride=2)
        self.deep = ConvBNReLU(6, 10, stride=4)
        self.aspp = ConcatASPP(10, 4, (1, 2))
        self.bot_aspp = nn.Conv2d(16, 5, 1, bias=False)
        self.bot_fine = nn.Conv2d(6, 3, 1, bias=False)
        self.final = nn.Sequential(*ConvBNReLU(8, 7), *ConvBNReLU(7, 7), nn.Conv2d(7, 4, 1, bias=False))

    def decoder_input(self, images):
        fine = self.stem(images)
        context = F.interpolate(self.bot_aspp(self.aspp(self.deep(fine))), size=fine.shape[-2:], mode="bilinear",
                                align_corners=True)
        return torch.cat([self.bot_fine(fine), context], dim=1)

    def forward(self, images):
        return F.interpolate(self.final(self.decoder_input(images)), size=images.shape[-2:], mode="bilinear",
                             align_corners=True)


def _base():
    torch.manual_seed(0)
    model = MiniWV3()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_published_layout_adds_the_residual_to_the_decoder_input_of_the_classifier_block():
    base = _base()
    images = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        reference = base(images)
    model = RPLModel(base, probe_size=(48, 64)).eval()
    assert model.head_name == "final.6" and model.residual_name == "final"
    assert model.build_params["width"] == 4 and model.build_params["rates"] == [1, 2]  # read from ConcatASPP
    assert model.rpl.residual_head.out_channels == 8  # the width of dec0, not of z (7)
    with torch.no_grad():
        assert torch.equal(model(images), reference)  # zero-initialised residual
        torch.manual_seed(1)
        nn.init.normal_(model.rpl.residual_head.weight, std=0.5)
        got = model(images)
        out = model(images, training_outputs=True)
        # by hand: RPL ASPP on the trunk output, upsampled (align_corners=True) to dec0, added before `final`
        dec0 = base.decoder_input(images)
        hidden = F.interpolate(model.rpl.aspp(base.deep(base.stem(images))), size=dec0.shape[-2:],
                               mode="bilinear", align_corners=True)
        rpl_logits = base.final(dec0 + model.rpl.residual_head(hidden))
    expected = F.interpolate(rpl_logits, size=(48, 64), mode="bilinear", align_corners=True)
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, reference, atol=1e-3)
    assert torch.allclose(out["rpl"], rpl_logits, atol=1e-6)
    assert torch.allclose(out["vanilla"], base.final(dec0), atol=1e-6)
    assert out["projection"].shape == (2, 304, 24, 32)
    with torch.no_grad():
        view = ModelAdapter(model, probe_size=(48, 64))(images)  # scorers see the residual logits
    assert torch.allclose(view.logits, rpl_logits, atol=1e-6) and view.align_corners


def test_the_head_can_be_chosen_and_a_module_not_ending_in_the_head_is_refused():
    model = RPLModel(_base(), residual_module="final.6", probe_size=(48, 64))
    assert model.rpl.residual_head.out_channels == 7  # z, the head's input
    with pytest.raises(OodsegError, match="residual_module 'bot_fine': its output is not the output of the head"):
        RPLModel(_base(), residual_module="bot_fine", probe_size=(48, 64))
    with pytest.raises(OodsegError, match="residual_module 'nope': no module"):
        RPLModel(_base(), residual_module="nope", probe_size=(48, 64))
