"""The seeds' own networks (issue 14): key layout against the public code's state-dict listing,
parameter counts, block computations against hand-written references, and small forwards through
the adapter, PGN and the post-hoc scores. Big models are built on the ``meta`` device where only
keys/shapes matter, and once per module otherwise."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax as np_log_softmax
from scipy.special import logsumexp as np_logsumexp
from torch import nn

from oodseg import scores
from oodseg.adapter import ModelAdapter
from oodseg.models import available_architectures, build_model, load_checkpoint, save_checkpoint
from oodseg.models.deepwv3 import ConcatASPP, DeepWV3Plus, DeepWV3PlusRPL, DeepWV3PlusTH
from oodseg.models.ldn import LDN121, SpatialPyramidPooling, Transition
from oodseg.models.wideresnet import IdentityResidualBlock

FIXTURE = Path(__file__).parents[1] / "fixtures" / "deepwv3plus-state-dict.txt"
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SIZE = (16, 24)  # small input: stride-8 trunk output 2×3


def _listing() -> list[tuple[str, str, str]]:
    """(name, shape, dtype) rows of the public code's DeepWV3Plus(19) state dict."""
    rows = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("PARAMS"):
            break
        if line.startswith(("#", "NUM_KEYS")):
            continue
        name, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)
        rows.append((name, shape, dtype))
    return rows


def _rows(model: nn.Module) -> list[tuple[str, str, str]]:
    return [(k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()]


def _on_meta(architecture: str, **params) -> nn.Module:
    with torch.device("meta"):
        return build_model(architecture, **params)


def _num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so eval-mode BN is not an identity."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model.eval()


# -- keys, shapes, counts ---------------------------------------------------------------------
def test_deepwv3plus_state_dict_equals_the_public_listing():
    model = _on_meta("deepwv3plus", num_classes=19)
    assert _rows(model) == _listing()
    assert len(model.state_dict()) == 268
    assert _num_parameters(model) == 137_103_936
    assert not any(isinstance(m, nn.Dropout) and not isinstance(m, nn.Dropout2d) for m in model.modules())
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout2d)] == [0.3, 0.5]
    assert nn.Dropout is not nn.Dropout2d  # no global monkey-patching


def test_deepwv3plus_any_class_count():
    model = _on_meta("deepwv3plus", num_classes=7)
    assert model.state_dict()["final.6.weight"].shape == (7, 256, 1, 1)
    assert _num_parameters(model) == 137_103_936 - 12 * 256


def test_rpl_keys_with_and_without_projector():
    base = set(_on_meta("deepwv3plus", num_classes=19).state_dict())
    rpl = _on_meta("deepwv3plus-rpl", num_classes=19).state_dict()
    corocl = _on_meta("deepwv3plus-rpl", num_classes=19, projector=True).state_dict()
    assert (len(rpl), len(corocl)) == (300, 302)
    extra = set(rpl) - base
    aspp = {k.removeprefix("aspp.") for k in base if k.startswith("aspp.")}
    assert extra == ({f"residual_block.atten_aspp.{k}" for k in aspp}
                     | {"residual_block.bot_atten_aspp.weight", "residual_block.atten_aspp_final.weight"})
    assert len(aspp) == 30 and base <= set(rpl)
    assert rpl["residual_block.atten_aspp_final.weight"].shape == (304, 256, 1, 1)
    assert rpl["residual_block.bot_atten_aspp.weight"].shape == (256, 1280, 1, 1)
    assert set(corocl) - set(rpl) == {"residual_block.proj_head.proj.0.weight", "residual_block.proj_head.proj.0.bias"}
    assert corocl["residual_block.proj_head.proj.0.weight"].shape == (304, 256, 1, 1)
    assert corocl["residual_block.proj_head.proj.0.bias"].shape == (304,)


def test_th_adds_only_the_ood_head():
    base = set(_on_meta("deepwv3plus", num_classes=19).state_dict())
    model = _on_meta("deepwv3plus-th", num_classes=19)
    state = model.state_dict()
    assert set(state) - base == {f"logits_ood.norm.{k}" for k in
                                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")} | {
        "logits_ood.conv.weight", "logits_ood.conv.bias"}
    assert state["logits_ood.conv.weight"].shape == (2, 304, 1, 1) and state["logits_ood.conv.bias"].shape == (2,)
    assert model.logits_ood.norm.momentum == 0.01


def test_ldn121_keys_and_parameters():
    model = _on_meta("ldn121", num_classes=19)
    state = model.state_dict()
    assert len(state) == 827 and _num_parameters(model) == 11_067_928
    expected = {"backbone.features.denseblock1.denselayer1.norm1.weight": (64,),
                "backbone.features.transition1.conv.weight": (128, 256, 1, 1),
                "spp.spp.spp.spp_bn.conv.weight": (512, 1024, 1, 1),
                "upsample.upsample_layers.upsample_0.blend_conv.conv.weight": (256, 512, 3, 3),
                "logits.conv.weight": (19, 128, 1, 1), "logits.conv.bias": (19,),
                "logits_ood.conv.weight": (2, 128, 1, 1)}
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith("backbone.features.norm5") for k in state)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}


def test_registered_names_and_conventions():
    assert {"deepwv3plus", "deepwv3plus-rpl", "deepwv3plus-th", "ldn121"} <= set(available_architectures())
    wv3 = _on_meta("deepwv3plus", num_classes=19).conventions()
    assert wv3["align_corners"] is True and wv3["output_stride"] == 2 and wv3["head"] == "final.6"
    assert wv3["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    ldn = _on_meta("ldn121", num_classes=19).conventions()
    assert ldn["align_corners"] is False and ldn["normalization"] is None and ldn["output_stride"] == 4
    assert ldn["head"] == "logits.conv" and ldn["extra_heads"] == {"ood_logits": "logits_ood.conv"}
    for name in ("deepwv3plus", "deepwv3plus-th", "deepwv3plus-rpl"):
        model = _on_meta(name, num_classes=19)
        assert not any("mean" == k.split(".")[-1] and "normalize" in k for k in model.state_dict())
        assert not any("criterion" in k for k in model.state_dict())


# -- blocks against hand-written references ----------------------------------------------------
def _bn_relu(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return torch.clamp(x * scale.view(1, -1, 1, 1) + (bn.bias - bn.running_mean * scale).view(1, -1, 1, 1), min=0)


@pytest.mark.parametrize("channels, stride, dilation", [((6, 6), 1, 1), ((4, 8), 2, 1), ((3, 5), 1, 2),
                                                        ((4, 6, 8), 1, 4), ((4, 6, 6), 1, 1)])
def test_identity_residual_block_matches_a_handwritten_reference(channels, stride, dilation):
    in_channels = 6
    block = _randomize_bn(IdentityResidualBlock(in_channels, channels, stride=stride, dilation=dilation,
                                                dropout=0.5 if len(channels) == 3 else None))
    x = torch.randn(2, in_channels, 9, 11)
    a = _bn_relu(x, block.bn1[0])
    convs = block.convs
    if len(channels) == 2:
        y = F.conv2d(a, convs.conv1.weight, stride=stride, padding=dilation, dilation=dilation)
        y = F.conv2d(_bn_relu(y, convs.bn2[0]), convs.conv2.weight, padding=dilation, dilation=dilation)
    else:
        y = F.conv2d(a, convs.conv1.weight, stride=stride)
        y = F.conv2d(_bn_relu(y, convs.bn2[0]), convs.conv2.weight, padding=dilation, dilation=dilation)
        y = F.conv2d(_bn_relu(y, convs.bn3[0]), convs.conv3.weight)  # Dropout2d is the identity in eval
    projected = stride != 1 or in_channels != channels[-1]
    assert (block.proj_conv is not None) == projected
    shortcut = F.conv2d(a, block.proj_conv.weight, stride=stride) if projected else x
    with torch.no_grad():
        torch.testing.assert_close(block(x), y + shortcut, rtol=1e-5, atol=1e-5)


def test_concat_aspp_order_and_rates():
    aspp = _randomize_bn(ConcatASPP(in_channels=5, width=3, rates=(1, 2, 3)))
    x = torch.randn(1, 5, 7, 6)

    def branch(seq, dilation=1, kernel=1):
        y = F.conv2d(x if kernel == 3 or seq is not aspp.img_conv else x.mean((2, 3), keepdim=True),
                     seq[0].weight, padding=dilation if kernel == 3 else 0, dilation=dilation)
        return _bn_relu(y, seq[1])

    expected = [branch(aspp.img_conv).expand(-1, -1, 7, 6), branch(aspp.features[0])]
    expected += [branch(aspp.features[i], dilation=r, kernel=3) for i, r in ((1, 1), (2, 2), (3, 3))]
    with torch.no_grad():
        torch.testing.assert_close(aspp(x), torch.cat(expected, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size, expected_grids", [
    ((3, 10), [(8, 27), (4, 13), (2, 7), (1, 3)]),   # W/H = 10/3
    ((2, 5), [(8, 20), (4, 10), (2, 5), (1, 2)]),    # W/H = 2.5: Python's round(2.5) = 2, as the source
])
def test_spp_grids_follow_the_aspect_ratio(size, expected_grids):
    spp = _randomize_bn(SpatialPyramidPooling(in_channels=8))
    x = torch.randn(1, 8, *size)
    grids = []
    for level in list(spp.spp)[1:-1]:
        level.register_forward_hook(lambda module, inputs, output: grids.append(tuple(inputs[0].shape[-2:])))
    with torch.no_grad():
        out = spp(x)
        assert grids == expected_grids
        base = spp.spp.spp_bn(x)
        levels = [base] + [F.interpolate(spp.spp[i + 1](F.adaptive_avg_pool2d(base, g)), size=size,
                                         mode="bilinear", align_corners=False)
                           for i, g in enumerate(expected_grids)]
        expected = spp.spp.spp_fuse(torch.cat(levels, 1))
    torch.testing.assert_close(out, expected)


def test_ldn_transition_pools_without_counting_the_padding():
    transition = _randomize_bn(Transition(3, 2))
    x = torch.randn(1, 3, 5, 6)
    with torch.no_grad():
        y = F.conv2d(torch.relu(transition.norm(x)), transition.conv.weight)
        got = transition(x)
    # a 3×3 mean over the pixels inside the image only, at stride 2
    expected = torch.empty(1, 2, 3, 3)
    for i in range(3):
        for j in range(3):
            rows = slice(max(0, 2 * i - 1), 2 * i + 2)
            cols = slice(max(0, 2 * j - 1), 2 * j + 2)
            expected[:, :, i, j] = y[:, :, rows, cols].mean(dim=(2, 3))
    torch.testing.assert_close(got, expected)


def test_ldn121_checkpoint_round_trip_keeps_keys_and_conventions(tmp_path):
    model = _randomize_bn(LDN121(num_classes=3))
    save_checkpoint(model, tmp_path / "ldn", "ldn121", {"num_classes": 3}, classes=["a", "b", "c"],
                    conventions=model.conventions())
    loaded, meta = load_checkpoint(tmp_path / "ldn")
    assert isinstance(loaded, LDN121) and meta["conventions"] == model.conventions()
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# -- forwards on small inputs --------------------------------------------------------------------
PGN = [("pgn", {"layer": layer, "label": label}) for layer in ("last", "second_to_last")
       for label in ("onehot", "uniform")]
LOGIT_SCORES = ["msp", "entropy", "variation_ratio", "margin", "max_logit", "energy", "jsd", "feature_norm",
                "n_max_logit", "n_energy", "n_energy_cw"]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand((2, 3, *SIZE), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def wv3_run(images):
    """One DeepWV3Plus(5) with random weights and BN statistics: its output, its output on manually
    normalised images with ``normalize`` removed, the adapter, its SegOutput and every logits-only
    score + PGN (both layers) on it (four forward passes in all, the adapter's probe included)."""
    torch.manual_seed(0)
    model = _randomize_bn(DeepWV3Plus(num_classes=5))
    with torch.no_grad():
        logits = model(images)
        normalize = model.normalize
        try:
            model.normalize = nn.Identity()
            manual = model((images - MEAN) / STD)
        finally:
            model.normalize = normalize
        scorers = LOGIT_SCORES + [scores.get(name, **params) for name, params in PGN]
        with ModelAdapter(model, capture_block=True, probe_size=SIZE) as adapter:
            out = adapter(images)
            maps = scores.compute(scorers, out)
    return {"model": model, "logits": logits, "manual": manual, "adapter": adapter, "out": out, "maps": maps}


def test_deepwv3plus_forward_stride_and_normalisation(wv3_run):
    logits, manual = wv3_run["logits"], wv3_run["manual"]
    assert logits.shape == (2, 5, *SIZE) and bool(torch.isfinite(logits).all())
    # the ImageNet normalisation is applied exactly once, inside the model
    torch.testing.assert_close(logits, manual, rtol=1e-5, atol=1e-4 * float(logits.abs().max()))


def test_adapter_on_deepwv3plus_finds_final6_and_upsamples_like_the_model(wv3_run):
    model, adapter, out = wv3_run["model"], wv3_run["adapter"], wv3_run["out"]
    assert adapter.head_name == "final.6" and adapter.align_corners and out.align_corners
    assert out.logits.shape == (2, 5, SIZE[0] // 2, SIZE[1] // 2) and out.bias is None
    assert out.features.shape == (2, 256, SIZE[0] // 2, SIZE[1] // 2)
    assert out.block is not None and out.block.conv_weight is model.final[3].weight
    torch.testing.assert_close(out.block.bn_scale, model.final[4].weight / torch.sqrt(model.final[4].running_var + 1e-5))
    # the model's output is its stride-2 logits upsampled with align_corners=True (and eval is deterministic:
    # the adapter's forward pass reproduces the first one exactly)
    direct = F.interpolate(out.logits, size=SIZE, mode="bilinear", align_corners=True)
    torch.testing.assert_close(out.upsampled_logits(), direct, rtol=0, atol=0)
    torch.testing.assert_close(wv3_run["logits"], direct, rtol=0, atol=0)


def test_logit_scores_and_pgn_run_on_deepwv3plus(wv3_run):
    out, maps = wv3_run["out"], wv3_run["maps"]
    pgn_keys = [scores.get(name, **params).key for name, params in PGN]
    assert list(maps) == LOGIT_SCORES + pgn_keys
    for key, value in maps.items():
        assert value.shape == (2, SIZE[0] // 2, SIZE[1] // 2) and bool(torch.isfinite(value).all()), key
    torch.testing.assert_close(maps["msp"], 1 - torch.softmax(out.logits, 1).amax(1))
    torch.testing.assert_close(maps["energy"], -torch.logsumexp(out.logits, 1))
    assert not torch.equal(maps[pgn_keys[0]], maps[pgn_keys[2]])  # last vs second-to-last layer
    up = out.upsample(maps["energy"])
    torch.testing.assert_close(up, F.interpolate(maps["energy"][:, None], size=SIZE, mode="bilinear",
                                                 align_corners=True)[:, 0], rtol=0, atol=0)


@pytest.fixture(scope="module")
def rpl() -> DeepWV3PlusRPL:
    torch.manual_seed(0)
    return _randomize_bn(DeepWV3PlusRPL(num_classes=5, projector=True))


def test_rpl_forward_returns_the_residual_logits_and_the_adapter_sees_them(rpl, images):
    images = images[:1]
    with torch.no_grad():
        logits = rpl(images)
        parts = rpl(images, training_outputs=True)
    half = (SIZE[0] // 2, SIZE[1] // 2)
    assert parts["vanilla"].shape == parts["rpl"].shape == (1, 5, *half)
    assert parts["projection"].shape == (1, 304, *half)
    assert not torch.allclose(parts["vanilla"], parts["rpl"])
    torch.testing.assert_close(logits, F.interpolate(parts["rpl"], size=SIZE, mode="bilinear", align_corners=True))
    with ModelAdapter(rpl, capture_block=True, probe_size=SIZE) as adapter, torch.no_grad():
        out = adapter(images)
        energy = scores.get("energy")(out)
    assert adapter.head_name == "final.6" and out.align_corners
    torch.testing.assert_close(out.logits, parts["rpl"])
    # the second call's input is final(dec0 + residual)'s penultimate map: W z reproduces the RPL logits
    torch.testing.assert_close(torch.einsum("cd,bdhw->bchw", out.weight, out.features), parts["rpl"],
                               rtol=1e-4, atol=1e-4 * float(parts["rpl"].abs().max()))
    torch.testing.assert_close(energy, -torch.logsumexp(parts["rpl"], dim=1))
    # the captured block (final.3 → final.4 → ReLU) belongs to the same, second call of final
    block = out.block
    with torch.no_grad():
        scale = block.bn_scale.view(1, -1, 1, 1)
        shift = (rpl.final[4].bias - rpl.final[4].running_mean * block.bn_scale).view(1, -1, 1, 1)
        pre_relu = F.conv2d(block.input, rpl.final[3].weight, padding=1) * scale + shift
    torch.testing.assert_close(pre_relu, block.pre_relu, rtol=1e-4, atol=1e-4 * float(pre_relu.abs().max()))
    torch.testing.assert_close(torch.relu(block.pre_relu), out.features)


def test_th_exposes_the_ood_head_and_the_densehybrid_score(images):
    images = images[:1]
    torch.manual_seed(0)
    model = _randomize_bn(DeepWV3PlusTH(num_classes=5))
    with torch.no_grad():
        output = model(images)
    assert list(output) == ["logits", "ood_logits"] and output["ood_logits"].shape == (1, 2, *SIZE)
    with ModelAdapter(model, probe_size=SIZE) as adapter, torch.no_grad():
        out = adapter(images)
        score = scores.get("densehybrid")(out)
    assert adapter.head_name == "final.6"
    ood = out.extras["ood_logits"]
    assert ood.shape == (1, 2, SIZE[0] // 2, SIZE[1] // 2)
    torch.testing.assert_close(F.interpolate(ood, size=SIZE, mode="bilinear", align_corners=True),
                               output["ood_logits"])
    torch.testing.assert_close(out.upsampled_logits(), output["logits"])
    expected = np_log_softmax(ood.double().numpy(), axis=1)[:, 1] - np_logsumexp(out.logits.double().numpy(), axis=1)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_ldn121_forward_at_stride_4_without_normalisation():
    torch.manual_seed(0)
    model = _randomize_bn(LDN121(num_classes=5))
    size = (32, 64)
    images = torch.rand((1, 3, *size), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = model(images)
    assert output["logits"].shape == (1, 5, *size) and output["ood_logits"].shape == (1, 2, *size)
    with ModelAdapter(model, capture_block=True, probe_size=size) as adapter, torch.no_grad():
        out = adapter(images)
        maps = scores.compute(["msp", "energy", "densehybrid"], out)
    assert adapter.head_name == "logits.conv" and not out.align_corners
    # pre-activation head: the last blend conv → logits.norm → ReLU feeds the classifier
    assert out.block.conv_weight is model.upsample.upsample_layers.upsample_2.blend_conv.conv.weight
    assert out.logits.shape == (1, 5, 8, 16) and out.bias is model.logits.conv.bias
    assert out.extras["ood_logits"].shape == (1, 2, 8, 16)
    torch.testing.assert_close(out.upsampled_logits(), output["logits"], rtol=0, atol=0)
    torch.testing.assert_close(F.interpolate(out.extras["ood_logits"], size=size, mode="bilinear",
                                             align_corners=False), output["ood_logits"], rtol=0, atol=0)
    assert all(v.shape == (1, 8, 16) and bool(torch.isfinite(v).all()) for v in maps.values())
