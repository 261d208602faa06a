"""MaskAdapter on transformers' Mask2Former / MaskFormer (tiny random-init configurations): its P equals the
class-probability map of transformers' own ``post_process_semantic_segmentation``."""
import pytest
import torch
from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, MaskFormerConfig,
                          MaskFormerForInstanceSegmentation)
from transformers.models.mask2former import Mask2FormerImageProcessorPil

from oodseg import scores
from oodseg.mask_adapter import IMAGENET_MEAN, IMAGENET_STD, MaskAdapter, is_mask_classification

SWIN = dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=64,
            out_features=["stage1", "stage2", "stage3", "stage4"])


@pytest.fixture(scope="module")
def mask2former():
    torch.manual_seed(0)
    config = Mask2FormerConfig(num_labels=3, num_queries=5, hidden_dim=32, mask_feature_size=32, encoder_layers=1,
                               decoder_layers=2, dim_feedforward=32, num_attention_heads=2,
                               encoder_feedforward_dim=32, backbone_config=SWIN)
    return Mask2FormerForUniversalSegmentation(config).eval()


def test_probabilities_equal_transformers_semantic_post_processing(mask2former):
    # transformers upsamples the mask logits to 384×384 before the einsum; a 384×384 image with
    # resolution="image" makes the adapter do the same
    images = torch.rand(1, 3, 384, 384)
    adapter = MaskAdapter(mask2former, resolution="image")
    assert is_mask_classification(mask2former) and adapter.num_classes == 3 and adapter.num_queries == 5
    with torch.no_grad():
        out = adapter(images)
        pixel_values = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        outputs = mask2former(pixel_values=pixel_values)
    processed = Mask2FormerImageProcessorPil().post_process_semantic_segmentation(
        outputs, return_segmentation_scores=True)[0]
    torch.testing.assert_close(out.logits.exp()[0], processed.segmentation_scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.logits[0].argmax(0), processed.segmentation)
    # K = 3: no Cityscapes stuff classes to refine with, so SPEC §9's plain 1 − max P
    torch.testing.assert_close(scores.get("m2a", refine=False)(out)[0], 1 - processed.segmentation_scores.amax(0),
                               rtol=1e-5, atol=1e-6)


def test_mask_resolution_outputs_of_mask2former(mask2former):
    with torch.no_grad():
        out = MaskAdapter(mask2former)(torch.rand(2, 3, 64, 64))
    assert out.logits.shape == (2, 3, 16, 16)
    assert out.extras["class_logits"].shape == (2, 5, 4) and out.extras["mask_logits"].shape == (2, 5, 16, 16)
    maps = scores.compute(["rba", scores.get("m2a", refine_from=1, refine_to=2), "eam", "msp", "energy"], out)
    assert all(m.shape == (2, 16, 16) and bool(torch.isfinite(m).all()) for m in maps.values())


def test_maskformer_for_instance_segmentation():
    torch.manual_seed(0)
    config = MaskFormerConfig(num_labels=2, mask_feature_size=32, fpn_feature_size=32,
                              backbone_config=SWIN,
                              decoder_config=dict(model_type="detr", d_model=32, decoder_layers=1,
                                                  decoder_attention_heads=2, decoder_ffn_dim=32, encoder_layers=1,
                                                  encoder_attention_heads=2, encoder_ffn_dim=32))
    model = MaskFormerForInstanceSegmentation(config).eval()
    adapter = MaskAdapter(model)
    with torch.no_grad():
        out = adapter(torch.rand(1, 3, 64, 64))
    assert out.logits.shape[:2] == (1, 2) and out.extras["class_logits"].shape == (1, adapter.num_queries, 3)
    assert bool(torch.isfinite(scores.get("rba")(out)).all())
