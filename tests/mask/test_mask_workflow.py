"""``oodseg score`` with mask scores: refused on a per-pixel network, mixed fitting data refused, both before
anything is written; a negative class declared through the architecture parameters reaches ``uno``."""
import numpy as np
import pytest
import torch
from PIL import Image

from oodseg import scores
from oodseg.errors import OodsegError
from oodseg.mask_adapter import MaskAdapter
from oodseg.models import build_model, load_checkpoint, save_checkpoint
from oodseg.workflows.score import score_dataset

MASK_ARCH = {"num_classes": 19, "widths": [4, 8, 8], "hidden": 16, "queries": 5, "heads": 2, "feedforward": 16}


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(folder / "a.png")
    return folder


def test_mask_scores_on_a_per_pixel_network_are_refused_before_writing(tmp_path, images):
    params = {"num_classes": 19, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}
    save_checkpoint(build_model("small", **params), tmp_path / "pixel", "small", params)
    with pytest.raises(OodsegError, match="rba, maskomaly need a mask-classification model") as info:
        score_dataset(tmp_path / "pixel", images, ["rba", "maskomaly"], tmp_path / "out", fit_data=images)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_maskomaly_and_sml_in_one_run_are_refused_before_writing(tmp_path, images):
    save_checkpoint(build_model("small-mask2former", **MASK_ARCH), tmp_path / "m2f", "small-mask2former", MASK_ARCH)
    with pytest.raises(OodsegError, match="score them in separate runs"):
        score_dataset(tmp_path / "m2f", images, ["maskomaly", "sml"], tmp_path / "out", fit_data=images)
    assert not (tmp_path / "out").exists()


def test_negative_class_from_the_architecture_reaches_uno(tmp_path):
    arch = {**MASK_ARCH, "negative_class": True}
    save_checkpoint(build_model("small-mask2former", **arch), tmp_path / "uno", "small-mask2former", arch)
    model, _ = load_checkpoint(tmp_path / "uno")
    adapter = MaskAdapter(model.eval())
    assert adapter.negative_class and adapter.num_classes == 19
    with torch.no_grad():
        out = adapter(torch.rand(1, 3, 32, 32))
    assert out.extras["class_logits"].shape == (1, 5, 21) and out.logits.shape == (1, 19, 8, 8)
    assert scores.get("uno")(out).shape == (1, 8, 8)


def test_mask_scores_leave_parameters_buffers_and_modes_untouched():
    """As tests/test_adapter_safety.py for per-pixel models: a train-mode mask model is scored in eval mode
    (its eval-mode output), every mask score and odin leave its state, modes and gradients as they were."""
    torch.manual_seed(0)
    model = build_model("small-mask2former", **{**MASK_ARCH, "negative_class": True})
    model.train()
    model.backbone.eval()  # a mixed state the user chose: it must come back as it was
    modes = [m.training for m in model.modules()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        expected = model(images)["masks_queries_logits"]
        for module, training in zip(model.modules(), modes):
            module.training = training
    adapter = MaskAdapter(model)
    out = adapter(images)
    assert torch.equal(out.extras["mask_logits"], expected)
    label = torch.zeros(1, 32, 32, dtype=torch.int64)
    label[0, 10:20, 10:20] = 1
    for name in ("rba", "m2a", "eam", "uno", "maskomaly", "msp", "odin"):
        scorer = scores.get(name, refine_from=0, refine_to=0) if name == "m2a" else scores.get(name)
        if scorer.needs_fit:
            scorer.fit([adapter(images)], [label])
        result = scorer(adapter, images) if scorer.runs_model else scorer(adapter(images))
        assert torch.isfinite(result).all(), name
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
