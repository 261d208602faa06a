"""Any model source through the CLI: transformers folders and a user's python: factory scored by `oodseg score`
give the maps an independent in-process path gives; import, train --init, --probs and one-line errors."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from oodseg.cli import main

import source_nets

FACTORY = "python:source_nets:build_split_net"
SIZE = 32  # DPT takes square images only
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _hf_models():
    """(config, preprocessor statistics, name of the classifier conv, align_corners of the model's upsampling)."""
    import transformers as T

    backbone = T.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                out_features=["stage1", "stage2", "stage3", "stage4"])
    return {
        "segformer": (T.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                        patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1],
                                        mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=5),
                      (IMAGENET_MEAN, IMAGENET_STD), "decode_head.classifier", False),
        "upernet": (T.UperNetConfig(backbone_config=backbone, hidden_size=16, auxiliary_in_channels=24,
                                    auxiliary_channels=8, num_labels=5),
                    (IMAGENET_MEAN, IMAGENET_STD), "decode_head.classifier", False),
        "dpt": (T.DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            image_size=SIZE, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                            neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, num_labels=5,
                            use_auxiliary_head=True),
                ([0.5] * 3, [0.5] * 3), "head.head.4", True),
        "beit": (T.BeitConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                              image_size=SIZE, patch_size=8, out_indices=[0, 1, 2, 3], use_relative_position_bias=True,
                              pool_scales=[1, 2], auxiliary_channels=8, num_labels=5, use_auxiliary_head=True),
                 ([0.5] * 3, [0.5] * 3), "decode_head.classifier", False),
    }


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    """Each tiny random-init model saved with save_pretrained plus the preprocessor config its processor writes."""
    import transformers

    root = tmp_path_factory.mktemp("hf")
    folders = {}
    for name, (config, (mean, std), _, _) in _hf_models().items():
        torch.manual_seed(0)
        model = transformers.AutoModelForSemanticSegmentation.from_config(config).eval()
        for module in model.modules():  # BN statistics away from (0, 1), so that eval mode matters
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.save_pretrained(root / name)
        (root / name / "preprocessor_config.json").write_text(json.dumps({
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean,
            "image_std": std, "size": {"height": SIZE, "width": SIZE}}))
        folders[name] = root / name
    return folders


@pytest.fixture
def frames(tmp_path, rng):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for fid in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{fid}.png")
    return folder


def _images(folder: Path) -> dict[str, torch.Tensor]:
    return {p.stem: torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            for p in sorted(folder.glob("*.png"))}


def _invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def _score(model_args, frames, out, methods=("max_logit", "entropy")):
    result = _invoke("score", *model_args, "--images", frames, *[a for m in methods for a in ("--method", m)],
                     "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _map(out: Path, method: str, dataset: str, fid: str) -> np.ndarray:
    with h5py.File(out / method / dataset / f"{fid}.hdf5", "r") as handle:
        return handle["value"][()]


def _head_logits(model: torch.nn.Module, head: str, call) -> torch.Tensor:
    """The output of module ``head`` during ``call()`` (a forward hook, independent of oodseg's adapter)."""
    captured = {}
    handle = model.get_submodule(head).register_forward_hook(lambda m, i, o: captured.setdefault("logits", o))
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return captured["logits"]


def _max_logit_map(head_logits: torch.Tensor, align_corners: bool) -> np.ndarray:
    """max_logit (larger = more anomalous) at the head's resolution, upsampled bilinearly to the image."""
    score = -head_logits.max(dim=1).values
    return F.interpolate(score[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=align_corners)[0, 0].numpy()


@pytest.mark.parametrize("name", ["segformer", "upernet", "dpt", "beit"])
def test_transformers_folder_scored_through_the_cli_matches_the_python_path(name, hf_folders, frames, tmp_path):
    import transformers

    _, (mean, std), head, align_corners = _hf_models()[name]
    out = tmp_path / "out"
    summary = _score(["--model", f"hf:{hf_folders[name]}"], frames, out)
    assert summary["checkpoint"] == f"hf:{hf_folders[name]}" and summary["written"] == 2
    reference = transformers.AutoModelForSemanticSegmentation.from_pretrained(hf_folders[name]).eval()
    normalise = lambda x: (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)  # noqa: E731
    for fid, image in _images(frames).items():
        logits = _head_logits(reference, head, lambda: reference(pixel_values=normalise(image)))
        np.testing.assert_allclose(_map(out, "max_logit", "imgs", fid), _max_logit_map(logits, align_corners),
                                   rtol=1e-5, atol=1e-5)


def test_python_factory_with_pth_scores_like_the_hand_normalised_model(frames, tmp_path):
    torch.manual_seed(3)
    net = source_nets.build_split_net(num_classes=4)
    for parameter in net.parameters():
        parameter.data.normal_(0, 0.5)
    weights = tmp_path / "net.pth"
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()}}, weights)
    common = ["--model", FACTORY, "--weights", weights, "--model-arg", "num_classes=4", "--output-key", "seg",
              "--head", "classifier"]
    _score([*common, "--normalize", "imagenet"], frames, tmp_path / "norm")
    _score(common, frames, tmp_path / "raw")
    for fid, image in _images(frames).items():
        normalised = (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        expected = _max_logit_map(_head_logits(net, "classifier", lambda: net(normalised)), False)
        unnormalised = _max_logit_map(_head_logits(net, "classifier", lambda: net(image)), False)
        with_option, without = _map(tmp_path / "norm", "max_logit", "imgs", fid), _map(tmp_path / "raw", "max_logit",
                                                                                          "imgs", fid)
        np.testing.assert_allclose(with_option, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(without, unnormalised, rtol=1e-5, atol=1e-5)
        assert np.abs(with_option - without).max() > 0.1  # the normalisation matters for this model
    # oodseg import wraps the same source; the checkpoint alone then gives the same files
    result = _invoke("import", FACTORY, "--weights", weights, "--model-arg", "num_classes=4", "--output-key", "seg",
                     "--head", "classifier", "--normalize", "imagenet", "--out", tmp_path / "ck", "--json")
    assert result.exit_code == 0, result.output
    copied = _invoke("import", tmp_path / "ck", "--out", tmp_path / "ck2")  # a checkpoint is a source too
    assert copied.exit_code == 0 and f"{FACTORY}?" in copied.output, copied.output
    assert json.loads((tmp_path / "ck2" / "model.json").read_text())["params"] == \
        json.loads((tmp_path / "ck" / "model.json").read_text())["params"]
    _score(["--checkpoint", tmp_path / "ck"], frames, tmp_path / "ck_out")
    for fid in ("a", "b"):
        for method in ("max_logit", "entropy"):
            np.testing.assert_array_equal(_map(tmp_path / "ck_out", method, "imgs", fid),
                                          _map(tmp_path / "norm", method, "imgs", fid))


def test_probs_take_a_model_source(frames, tmp_path):
    from oodseg.data import open_dataset
    from oodseg.workflows.probabilities import open_probabilities, probabilities_name

    net = source_nets.build_split_net(num_classes=3)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    spec = f"{FACTORY}?output_key=seg&num_classes=3&weights={tmp_path / 'net.pt'}"
    dataset = open_dataset("images", frames, labels="none")
    source = open_probabilities(spec)
    try:
        probs, _ = source(dataset[0])
    finally:
        source.close()
    with torch.no_grad():
        expected = torch.softmax(net(_images(frames)["a"])["seg"], dim=1)[0].numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert source.classes == [f"class_{i}" for i in range(3)]
    assert probabilities_name(spec) == f"{FACTORY}?output_key=seg&weights={tmp_path / 'net.pt'}&num_classes=3"


def _bad_inputs(tmp_path):
    other = source_nets.build_split_net(num_classes=7, width=16)
    wrong = tmp_path / "other.pth"
    torch.save(other.state_dict(), wrong)
    (tmp_path / "not_hf").mkdir()
    seg = ["--output-key", "seg"]
    return [
        (["--model", "smp:Unet"], "unknown model source prefix 'smp:'"),
        (["--model", "python:source_nets:broken_factory"],
         "python:source_nets:broken_factory: the factory raised ValueError: width must be a multiple of 8, got 4"),
        (["--model", FACTORY, "--weights", wrong, *seg], f"{wrong}: state dict does not fit the architecture"),
        (["--model", f"hf:{tmp_path / 'not_hf'}"], "not_hf: no config.json"),
        (["--model", FACTORY, *seg, "--head", "decoder.cls"], "--head 'decoder.cls': no module of that name"),
        (["--model", FACTORY, *seg, "--head", "stem.0"], "--head 'stem.0': is a Conv2d(kernel=(3, 3)"),
        (["--model", FACTORY, *seg, "--normalize", "0.5,0.5/1,1"], "--normalize: expected imagenet, none or"),
    ]


def test_bad_sources_fail_with_one_line_and_write_nothing(frames, tmp_path):
    for args, message in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        result = _invoke("score", *args, "--images", frames, "--method", "entropy", "--out", out)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.output)
        assert not out.exists()
        imported = _invoke("import", *args[1:], "--out", tmp_path / "ck")
        assert imported.exit_code == 2 and message.replace("--model ", "") in imported.output, imported.output
        assert not (tmp_path / "ck").exists() and not list(tmp_path.glob(".ck*"))


def test_train_init_takes_a_source_and_records_it(tmp_path):
    """entropy-max fine-tuning of a python: model with weights and conventions; the checkpoint rebuilds it."""
    from training_fixtures import write_tiny_cityscapes

    from oodseg.models import load_checkpoint

    data = write_tiny_cityscapes(tmp_path / "data", n_train=4, n_val=1)
    net = source_nets.build_split_net(num_classes=19)
    weights = tmp_path / "net.safetensors"
    from safetensors.torch import save_file
    save_file(net.state_dict(), str(weights))
    out = tmp_path / "run"
    result = _invoke("train", "--recipe", "entropy-max", "--data", data, "--out", out, "--init", FACTORY,
                     "--weights", weights, "--model-arg", "num_classes=19", "--output-key", "seg",
                     "--normalize", "imagenet", "--head", "classifier", "--steps", "2", "--batch-size", "2",
                     "--crop-size", "32", "--no-validate", "--json")
    assert result.exit_code == 0, result.output
    model, meta = load_checkpoint(out / "checkpoint")
    assert meta["architecture"] == "source" and meta["params"]["source"] == FACTORY
    assert meta["params"]["model_args"] == {"num_classes": 19}
    assert meta["params"]["conventions"]["normalize"]["mean"] == IMAGENET_MEAN
    assert meta["params"]["conventions"]["head"] == "classifier"
    trained = model.state_dict()
    assert set(trained) == set(net.state_dict())  # the user's key names
    assert any(not torch.equal(trained[k], v) for k, v in net.state_dict().items())  # it trained


def test_ensemble_members_are_source_strings(frames, tmp_path):
    """`--ensemble` takes a source string with its options after '?'; the map is the normalised entropy of the
    members' mean head softmax, computed here by hand."""
    nets, paths = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = source_nets.build_split_net(num_classes=4)
        for parameter in net.parameters():
            parameter.data.normal_(0, 0.5)
        nets.append(net)
        paths.append(tmp_path / f"net{seed}.pth")
        torch.save(net.state_dict(), paths[-1])
    member = f"{FACTORY}?weights={paths[1]}&normalize=imagenet&output_key=seg&head=classifier"
    summary = _score(["--model", FACTORY, "--weights", paths[0], "--normalize", "imagenet", "--output-key", "seg",
                      "--ensemble", member], frames, tmp_path / "out", methods=("ensemble",))
    assert summary["ensemble"] == [f"{FACTORY}?head=classifier&normalize=imagenet&output_key=seg&weights={paths[1]}"]
    for fid, image in _images(frames).items():
        x = (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        probs = sum(torch.softmax(_head_logits(net, "classifier", lambda: net(x)), dim=1) for net in nets) / 2
        entropy = -(probs * probs.log()).sum(dim=1) / np.log(4)
        expected = F.interpolate(entropy[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(_map(tmp_path / "out", "ensemble", "imgs", fid), expected.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_train_refuses_a_bad_source_before_writing(tmp_path):
    from training_fixtures import write_tiny_cityscapes

    data = write_tiny_cityscapes(tmp_path / "data", n_train=2, n_val=1)
    for args, message in _bad_inputs(tmp_path)[:4]:
        out = tmp_path / "run"
        result = _invoke("train", "--data", data, "--out", out, "--init", *args[1:], "--steps", "1")
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()
