"""Model sources (oodseg.models.sources): parsing, conventions, python:/hf: loading, strict weights, import + reload."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from oodseg.adapter import ModelAdapter
from oodseg.errors import OodsegError
from oodseg.models import load_checkpoint
from oodseg.models.sources import (IMAGENET, ModelConventions, import_model_source, load_model_source,
                                   parse_model_source, parse_normalize)

import source_nets

TESTS = Path(__file__).resolve().parents[1]
SRC = TESTS.parent / "src"
FACTORY = "python:source_nets:build_split_net"


@pytest.fixture
def split_weights(tmp_path):
    """A DataParallel-style ``.pth`` ({"state_dict": {"module.*": ...}}) of a trained-looking SplitNet."""
    net = source_nets.build_split_net(num_classes=4)
    torch.manual_seed(3)
    for parameter in net.parameters():
        parameter.data.normal_(0, 0.5)
    path = tmp_path / "split.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 7}, path)
    return net, path


def _reference_logits(net, images, mean=None, std=None):
    """The head output and the model's "seg" output, with the normalisation applied by hand."""
    x = images if mean is None else (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        z = net.block(net.stem(x))
        return net.classifier(z), net(x)["seg"]


def test_source_strings_parse_and_print_canonically(tmp_path):
    source = parse_model_source("python:pkg.mod:make?num_classes=19&normalize=imagenet&widths=[8,16]&name=x",
                                head="cls", align_corners=True)
    assert source.kind == "python" and source.target == "pkg.mod:make"
    assert source.model_args == {"num_classes": 19, "widths": [8, 16], "name": "x"}
    assert source.options == {"normalize": "imagenet", "head": "cls", "align_corners": "true"}
    assert source.spec() == ("python:pkg.mod:make?align_corners=true&head=cls&normalize=imagenet&"
                             "name=x&num_classes=19&widths=[8,16]")
    assert parse_model_source(source.spec()) == source
    assert parse_model_source(f"hf:{tmp_path}").target == str(tmp_path.resolve())
    (tmp_path / "ckpt").mkdir()
    assert parse_model_source(tmp_path / "ckpt").spec() == str((tmp_path / "ckpt").resolve())


def test_normalize_spellings():
    assert parse_normalize("imagenet") == IMAGENET
    assert parse_normalize("none") == (None, None)
    assert parse_normalize("0.5,0.5,0.5/0.25,0.25,0.25") == ((0.5,) * 3, (0.25,) * 3)
    for bad, message in (("123.7,116.3,103.5/58.4,57.1,57.4", "0..255 scale"), ("0.5,0.5/0.5,0.5", "expected"),
                         ("mean", "expected"), ("0.5,0.5,0.5/0,1,1", "std must be > 0")):
        with pytest.raises(OodsegError, match=message):
            parse_normalize(bad)


def test_python_source_loads_dataparallel_pth_strictly_with_its_conventions(split_weights):
    net, path = split_weights
    model, meta = load_model_source(f"{FACTORY}?weights={path}&normalize=imagenet&output_key=seg&head=classifier")
    assert meta["architecture"] == "source" and meta["num_classes"] == 4
    assert meta["source"]["weights"] == {"file": str(path), "bytes": path.stat().st_size,
                                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert meta["params"]["conventions"] == {"normalize": {"mean": list(IMAGENET[0]), "std": list(IMAGENET[1])},
                                             "channel_order": "rgb", "output_key": "seg", "head": "classifier",
                                             "align_corners": None}
    # names stay the user's: the state dict has the user's keys, --head names the user's module
    assert set(model.state_dict()) == set(net.state_dict())
    assert not model.training
    images = torch.rand(2, 3, 24, 32)
    head, seg = _reference_logits(net, images, *IMAGENET)
    with torch.no_grad():
        assert torch.equal(model(images), seg)
    with ModelAdapter(model, head="classifier") as adapter, torch.no_grad():
        assert torch.equal(adapter(images).logits, head)


def test_channel_order_reverses_before_normalising(split_weights):
    net, path = split_weights
    model, _ = load_model_source(f"{FACTORY}?weights={path}&normalize=0.1,0.2,0.3/0.5,0.6,0.7&channel_order=bgr"
                                 "&output_key=seg")
    images = torch.rand(1, 3, 16, 16)
    _, expected = _reference_logits(net, images.flip(1), (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    with torch.no_grad():
        assert torch.equal(model(images), expected)


def test_safetensors_weights_and_strict_mismatch_diff(split_weights, tmp_path):
    net, _ = split_weights
    good = tmp_path / "split.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(good))
    model, _ = load_model_source(parse_model_source(FACTORY, weights=good, output_key="seg"), num_classes=4)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())
    other = source_nets.build_split_net(num_classes=6, width=16)
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("aux")}
    state["extra.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong))
    with pytest.raises(OodsegError) as info:
        load_model_source(parse_model_source(FACTORY, weights=wrong, output_key="seg"))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{wrong}: state dict does not fit")
    assert "2 missing keys (e.g. aux.bias, aux.weight)" in message and "1 unexpected keys (e.g. extra.weight)" in message
    assert "shape mismatches (e.g. stem.0.weight (16, 3, 3, 3) vs (8, 3, 3, 3); stem.0.bias (16,) vs (8,)" in message


@pytest.mark.parametrize("spec, message", [
    ("nope:thing", "unknown model source prefix 'nope:'"),
    ("python:source_nets:broken_factory?num_classes=5",
     "python:source_nets:broken_factory: the factory raised ValueError: width must be a multiple of 8, got 5"),
    ("python:source_nets_missing:build", "cannot import source_nets_missing"),
    ("python:source_nets:no_such", "source_nets has no callable 'no_such'"),
    ("python:source_nets", "expected python:package.module:factory"),
    (f"{FACTORY}", "a mapping needs a 'logits' or 'out' entry"),
    (f"{FACTORY}?output_key=logits", "output_key 'logits': the model's output has the entries 'seg', 'aux'"),
    (f"{FACTORY}?output_key=seg&head=nothing", "head 'nothing': no module of that name in SplitNet"),
    (f"{FACTORY}?output_key=seg&head=block.0", "head 'block.0': is a Conv2d(kernel=(3, 3)"),
    (f"{FACTORY}?weights=/no/such.pth&output_key=seg", "weights /no/such.pth: no such file"),
])
def test_bad_sources_are_one_line_errors(spec, message):
    with pytest.raises(OodsegError) as info:
        load_model_source(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_torchvision_that_does_not_import_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as an absent or broken (CUDA-only) install
    with pytest.raises(OodsegError) as info:
        load_model_source("torchvision:fcn_resnet50")
    message = str(info.value)
    assert message.startswith("torchvision:fcn_resnet50: torchvision does not import (ModuleNotFoundError")
    assert "is a CUDA build that does not import on CPU-only machines" in message and "\n" not in message


def test_torchvision_source_builds_without_weights_and_normalises_like_imagenet(monkeypatch, tmp_path):
    """The torchvision: wiring, against a stand-in torchvision package (the real one does not import on this
    CPU machine): get_model gets weights=None, the model arguments, and the model ImageNet-normalised input."""
    import types

    calls = []

    def get_model(name, **kwargs):
        calls.append((name, kwargs))
        return source_nets.TorchvisionLike(kwargs["num_classes"])

    segmentation = types.ModuleType("torchvision.models.segmentation")
    models = types.ModuleType("torchvision.models")
    models.segmentation = segmentation
    models.list_models = lambda module=None: ["deeplabv3_resnet50", "fcn_resnet50"] if module is segmentation else []
    models.get_model = get_model
    package = types.ModuleType("torchvision")
    package.models = models
    for name, module in (("torchvision", package), ("torchvision.models", models),
                         ("torchvision.models.segmentation", segmentation)):
        monkeypatch.setitem(sys.modules, name, module)
    torch.manual_seed(0)
    net = source_nets.TorchvisionLike(19)
    torch.save(net.state_dict(), tmp_path / "tv.pth")
    model, meta = load_model_source(f"torchvision:deeplabv3_resnet50?num_classes=19&weights={tmp_path / 'tv.pth'}")
    assert calls == [("deeplabv3_resnet50", {"weights": None, "weights_backbone": None, "num_classes": 19})]
    assert meta["num_classes"] == 19 and meta["params"]["conventions"]["normalize"]["std"] == list(IMAGENET[1])
    images = torch.rand(1, 3, 16, 16)
    expected = net((images - torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)) / torch.tensor(IMAGENET[1]).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.equal(model(images)["out"], expected["out"].detach())
    with pytest.raises(OodsegError, match="not a torchvision segmentation model; choose one of deeplabv3_resnet50"):
        load_model_source("torchvision:resnet50")


def test_checkpoint_directories_take_no_options(tmp_path, split_weights):
    _, path = split_weights
    out = tmp_path / "ckpt"
    import_model_source(parse_model_source(FACTORY, weights=path, output_key="seg"), out)
    with pytest.raises(OodsegError, match="a checkpoint directory takes no options"):
        load_model_source(f"{out}?normalize=imagenet")
    with pytest.raises(OodsegError, match="takes no model options"):
        load_model_source(parse_model_source(out, normalize="imagenet"))


def _tiny_segformer(folder: Path, num_labels: int = 5) -> Path:
    import transformers

    config = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                          patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1],
                                          mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=num_labels)
    transformers.SegformerForSemanticSegmentation(config).eval().save_pretrained(folder)
    return folder


def test_hf_folder_reads_its_preprocessor_config(tmp_path):
    import transformers

    folder = _tiny_segformer(tmp_path / "segformer")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SegformerImageProcessor", "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3],
        "size": {"height": 64, "width": 64}}))
    model, meta = load_model_source(f"hf:{folder}")
    assert meta["params"]["conventions"]["normalize"] == {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    assert meta["classes"] == [f"LABEL_{i}" for i in range(5)] and meta["num_classes"] == 5
    assert meta["source"]["preprocessor"]["size"] == {"height": 64, "width": 64}
    reference = transformers.SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    images = torch.rand(1, 3, 32, 32)
    pixel_values = (images * 255 * (1 / 255) - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / \
        torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(images).logits, reference(pixel_values=pixel_values).logits, atol=1e-6)
    # no rescale: the model sees 0..255 values, i.e. mean/std on the [0, 1] scale divided by 255
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_rescale": False, "do_normalize": True,
                                                                 "image_mean": [127.5] * 3, "image_std": [63.75] * 3}))
    _, meta = load_model_source(f"hf:{folder}")
    assert meta["params"]["conventions"]["normalize"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    # MobileViT's processor: rescale only, BGR order
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_rescale": True, "rescale_factor": 1 / 255,
                                                                 "do_flip_channel_order": True}))
    model, meta = load_model_source(f"hf:{folder}")
    assert meta["params"]["conventions"]["normalize"] is None and meta["params"]["conventions"]["channel_order"] == "bgr"
    with torch.no_grad():
        assert torch.allclose(model(images).logits, reference(pixel_values=images.flip(1)).logits, atol=1e-6)
    # command-line options win over the folder's
    _, meta = load_model_source(f"hf:{folder}?normalize=imagenet&channel_order=rgb")
    assert meta["params"]["conventions"]["normalize"]["mean"] == list(IMAGENET[0])
    assert meta["params"]["conventions"]["channel_order"] == "rgb"


def test_hf_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(OodsegError, match=r"empty: no config.json \(not a transformers save_pretrained folder\)"):
        load_model_source(f"hf:{tmp_path / 'empty'}")
    folder = _tiny_segformer(tmp_path / "segformer")
    with pytest.raises(OodsegError, match="brings its own weights"):
        load_model_source(f"hf:{folder}?weights={folder / 'model.safetensors'}")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_sizes"] = [8, 24]  # weights for another architecture
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(OodsegError) as info:
        load_model_source(f"hf:{folder}")
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


_RELOAD = """
import sys, numpy as np, torch
from oodseg.models import load_checkpoint
torch.manual_seed(0)
images = torch.rand(2, 3, 32, 32)
out = {}
for index, path in enumerate(sys.argv[2:]):
    model, meta = load_checkpoint(path)
    with torch.no_grad():
        output = model(images)
    out[str(index)] = (output["logits"] if isinstance(output, dict) else output).numpy()
np.savez(sys.argv[1], **out)
"""


def _reloaded_in_fresh_process(tmp_path, checkpoints) -> list:
    """The logits each checkpoint gives on the same random images, loaded by a new Python process."""
    result = tmp_path / "reloaded.npz"
    # the parent's thread count: convolutions split over another number of threads may differ in the last bit
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run([sys.executable, "-c", _RELOAD, str(result), *map(str, checkpoints)], env=env, check=True,
                   timeout=300, capture_output=True)
    reloaded = np.load(result)
    return [reloaded[str(i)] for i in range(len(checkpoints))]


def _import_and_expect(sources, outs) -> list:
    """Import each source into its out folder; returns the source models' logits on the reload images."""
    from oodseg.conventions import model_logits

    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    expected = []
    for source, out in zip(sources, outs):
        model, _ = load_model_source(source)
        with torch.no_grad():
            expected.append(model_logits(model(images)).numpy())
        assert import_model_source(source, out)["out"] == str(out)
    return expected


def test_imported_checkpoints_reload_in_a_fresh_process(tmp_path, split_weights):
    """checkpoint and python: sources written by import_model_source give the same logits in a new process, where
    the factory is not registered (its module path is recorded)."""
    from oodseg.models import build_model, save_checkpoint

    _, path = split_weights
    plain = tmp_path / "plain"
    small = build_model("small", num_classes=4, widths=[4, 8, 8])
    save_checkpoint(small, plain, "small", {"num_classes": 4, "widths": [4, 8, 8]})
    sources = [str(plain), f"{FACTORY}?weights={path}&normalize=imagenet&output_key=seg&head=classifier"]
    outs = [tmp_path / "ck_plain", tmp_path / "ck_python"]
    expected = _import_and_expect(sources, outs)
    meta = json.loads((outs[1] / "model.json").read_text())
    assert meta["architecture"] == "source" and meta["params"]["source"] == FACTORY
    assert meta["params"]["conventions"]["head"] == "classifier" and meta["source"]["spec"].startswith(FACTORY)
    for logits, reloaded in zip(expected, _reloaded_in_fresh_process(tmp_path, outs)):
        np.testing.assert_array_equal(reloaded, logits)
    # the checkpoint keeps the conventions: the reloaded python: model names its head
    model, _ = load_checkpoint(outs[1])
    with ModelAdapter(model) as adapter:
        assert adapter.head_name == "classifier"


@pytest.mark.slow
def test_imported_hf_checkpoint_reloads_without_its_folder(tmp_path):
    """An hf: checkpoint stores the config: a new process rebuilds it after the save_pretrained folder is gone."""
    hf_folder = _tiny_segformer(tmp_path / "segformer")
    out = tmp_path / "ck_hf"
    expected = _import_and_expect([f"hf:{hf_folder}"], [out])
    assert json.loads((out / "model.json").read_text())["params"]["config"]["model_type"] == "segformer"
    for file in hf_folder.iterdir():
        file.unlink()
    hf_folder.rmdir()
    np.testing.assert_array_equal(_reloaded_in_fresh_process(tmp_path, [out])[0], expected[0])


def test_import_refuses_existing_output_and_writes_nothing_on_error(tmp_path, split_weights):
    _, path = split_weights
    out = tmp_path / "ck"
    with pytest.raises(OodsegError, match="the factory raised"):
        import_model_source("python:source_nets:broken_factory", out)
    assert not out.exists() and not list(tmp_path.glob(".ck*"))
    out.mkdir()
    with pytest.raises(OodsegError, match="already exists"):
        import_model_source(f"{FACTORY}?weights={path}&output_key=seg", out)


def test_conventions_round_trip_json():
    conventions = ModelConventions(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), channel_order="bgr", output_key="out",
                                   head="h", align_corners=True)
    assert ModelConventions.from_json(json.loads(json.dumps(conventions.to_json()))) == conventions
    assert ModelConventions().updated({"normalize": "none", "align_corners": "false"}) == \
        ModelConventions(align_corners=False)
    with pytest.raises(OodsegError, match="channel_order: expected one of rgb, bgr"):
        ModelConventions().updated({"channel_order": "rbg"})

