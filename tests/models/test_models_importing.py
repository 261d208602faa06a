"""``oodseg import``: the seed papers' checkpoint files, written as each source's saving code writes them.

Format tests use small stand-ins with each architecture's key pattern (``seed_fixtures.STANDINS``);
the imported state dict is compared with the one written into the file, and the recorded sha256
with ``hashlib`` on the file.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import seed_fixtures as sf
from oodseg.classes import CITYSCAPES_CLASSES
from oodseg.cli import main
from oodseg.errors import OodsegError
from oodseg.models import load_checkpoint, registry
from oodseg.models.importing import FORMATS, import_checkpoint

# format -> (writer, stand-in constructor kwargs)
SOURCES = {
    "nvidia-wrn38": (sf.nvidia_checkpoint, {}),
    "meta-ood": (sf.meta_ood_checkpoint, {}),
    "smiyc-baseline": (sf.smiyc_checkpoint, {}),
    "rpl": (sf.rpl_checkpoint, {"projector": False}),
    "rpl-corocl": (sf.rpl_checkpoint, {"projector": True}),
    "densehybrid-wrn38th": (sf.bare_checkpoint, {}),
    "densehybrid-ldn121": (sf.bare_checkpoint, {}),
}


@pytest.fixture
def standins(monkeypatch):
    """Register the small stand-ins under the real architecture names for this test."""
    for name, cls in sf.STANDINS.items():
        monkeypatch.setitem(registry._ARCHITECTURES, name, cls)


def _source(fmt: str, num_classes: int = 19, counters: bool = True):
    """``(object to torch.save, state dict the network holds)`` for ``fmt``'s writer."""
    writer, kwargs = SOURCES[fmt]
    model = sf.STANDINS[FORMATS[fmt].architecture](num_classes=num_classes, **kwargs)
    state = sf.trained_state(model)
    if not counters:
        state = sf.without_batch_counters(state)
        model.load_state_dict(state, strict=False)  # the writers' optimizers only need the parameters
    return writer(model, state), state


def _assert_imported(out: Path, state: OrderedDict, source_file: Path, fmt: str) -> None:
    model, meta = load_checkpoint(out)
    assert not model.training
    imported = model.state_dict()
    assert set(imported) >= set(state)
    for key, value in imported.items():
        expected = state.get(key, torch.zeros((), dtype=torch.int64))  # absent BN counters become 0
        assert torch.equal(value, expected), key
    assert set(imported) - set(state) <= {k for k in imported if k.endswith("num_batches_tracked")}
    source = meta["source"]
    assert source["sha256"] == hashlib.sha256(source_file.read_bytes()).hexdigest()
    assert (source["file"], source["format"], source["bytes"]) == (source_file.name, fmt, source_file.stat().st_size)
    assert meta["classes"] == list(CITYSCAPES_CLASSES)
    ldn = fmt == "densehybrid-ldn121"  # seed-networks.md: LDN-121 stride 4, align_corners=False, no normalisation
    expected = (not ldn, 4 if ldn else 2, "logits.conv" if ldn else "final.6", None if ldn else [0.485, 0.456, 0.406])
    conventions = meta["conventions"]
    normalization = conventions["normalization"] and conventions["normalization"]["mean"]
    assert (conventions["align_corners"], conventions["output_stride"], conventions["head"], normalization) == expected


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("counters", [True, False], ids=["with-nbt", "without-nbt"])
@pytest.mark.parametrize("fmt", sorted(SOURCES))
def test_each_source_layout_imports_exactly(fmt, counters, legacy, standins, tmp_path):
    obj, state = _source(fmt, counters=counters)
    source_file = sf.write(obj, tmp_path / "published.pth", legacy=legacy)
    summary = import_checkpoint(source_file, tmp_path / "ckpt", fmt=fmt, progress=False)
    assert summary["format"] == fmt
    assert summary["dropped_keys"] == (["module.criterion.nll_loss.weight"] if fmt == "nvidia-wrn38" else [])
    _assert_imported(tmp_path / "ckpt", state, source_file, fmt)


@pytest.mark.parametrize("fmt", sorted(set(SOURCES) - {"smiyc-baseline"}))
def test_auto_detects_the_format(fmt, standins, tmp_path):
    obj, _ = _source(fmt)
    source_file = sf.write(obj, tmp_path / "published.pth", legacy=False)
    assert import_checkpoint(source_file, tmp_path / "ckpt", progress=False)["format"] == fmt


def test_auto_names_the_ambiguous_keys(standins, tmp_path):
    obj, _ = _source("smiyc-baseline")
    source_file = sf.write(obj, tmp_path / "baseline.pth", legacy=False)
    with pytest.raises(OodsegError, match="ambiguous.*nvidia-wrn38, meta-ood, smiyc-baseline.*'state_dict'.*--format"):
        import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert not (tmp_path / "ckpt").exists()


def test_numpy1_global_name_is_read(standins, tmp_path):
    """A file pickled under numpy 1 names ``numpy.core.multiarray.scalar`` (numpy 2: ``numpy._core``)."""
    obj, state = _source("nvidia-wrn38")
    source_file = sf.write(obj, tmp_path / "cityscapes_best.pth", legacy=True)
    data = source_file.read_bytes()
    new_name, old_name = b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n"
    assert data.count(new_name) >= 1  # protocol-2 GLOBAL opcode of numpy.float64 'mean_iu' and the momentum
    source_file.write_bytes(data.replace(new_name, old_name))
    import_checkpoint(source_file, tmp_path / "ckpt", fmt="nvidia-wrn38", progress=False)
    _assert_imported(tmp_path / "ckpt", state, source_file, "nvidia-wrn38")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_cuda_saved_tensors_load_on_cpu(legacy, standins, monkeypatch, tmp_path):
    """NVIDIA and RPL saved CUDA tensors; the file tags each storage 'cuda:0' (no GPU is needed to read it)."""
    obj, state = _source("rpl-corocl")
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        source_file = sf.write(obj, tmp_path / "rev3.pth", legacy=legacy)
    with pytest.raises(RuntimeError, match="CUDA"):  # control: the tag is really in the file
        torch.load(source_file, weights_only=False)
    import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    _assert_imported(tmp_path / "ckpt", state, source_file, "rpl-corocl")


def test_allow_list_is_minimal(standins, monkeypatch, tmp_path):
    """Each SAFE_GLOBALS entry is needed by an NVIDIA file written under numpy 2 or numpy 1."""
    from oodseg.models import importing

    obj, _ = _source("nvidia-wrn38")
    numpy2 = sf.write(obj, tmp_path / "numpy2.pth", legacy=True)
    numpy1 = tmp_path / "numpy1.pth"
    numpy1.write_bytes(numpy2.read_bytes().replace(b"cnumpy._core.multiarray\nscalar\n",
                                                   b"cnumpy.core.multiarray\nscalar\n"))
    for left_out in range(len(importing.SAFE_GLOBALS)):
        reduced = importing.SAFE_GLOBALS[:left_out] + importing.SAFE_GLOBALS[left_out + 1:]
        failures = 0
        with monkeypatch.context() as patch:
            patch.setattr(importing, "SAFE_GLOBALS", reduced)
            for source_file in (numpy2, numpy1):
                try:
                    importing.read_torch_file(source_file)
                except OodsegError:
                    failures += 1
        assert failures >= 1, f"SAFE_GLOBALS[{left_out}] is not needed"


def _renamed(state: OrderedDict) -> OrderedDict:
    return OrderedDict(("final.6.kernel" if k == "final.6.weight" else k, v) for k, v in state.items())


def _missing(state: OrderedDict) -> OrderedDict:
    return OrderedDict((k, v) for k, v in state.items() if k != "mod2.block1.proj_conv.weight")


@pytest.mark.parametrize("change, message", [
    (_renamed, r"1 missing keys \(e\.g\. final\.6\.weight\); 1 unexpected keys \(e\.g\. final\.6\.kernel\)"),
    (_missing, r"1 missing keys \(e\.g\. mod2\.block1\.proj_conv\.weight\)$"),
])
def test_key_mismatch_is_one_line_and_writes_nothing(change, message, standins, tmp_path):
    model = sf.TinyWV3()
    bad = change(sf.trained_state(model))
    source_file = sf.write(sf.smiyc_checkpoint(model, bad), tmp_path / "bad.pth", legacy=False)
    with pytest.raises(OodsegError, match=message) as info:
        import_checkpoint(source_file, tmp_path / "ckpt", fmt="smiyc-baseline", progress=False)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.pth"]


def test_other_class_count_is_named(standins, tmp_path):
    obj, _ = _source("nvidia-wrn38", num_classes=20)
    source_file = sf.write(obj, tmp_path / "c20.pth", legacy=True)
    with pytest.raises(OodsegError, match=r"checkpoint has 20 classes \(final\.6\.weight \(20, 4, 1, 1\)\), "
                                          r"--num-classes says 19"):
        import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["c20.pth"]
    import_checkpoint(source_file, tmp_path / "ckpt", num_classes=20, progress=False)
    assert load_checkpoint(tmp_path / "ckpt")[1]["classes"] == [f"class_{i}" for i in range(20)]


def test_shape_mismatch_is_named(standins, tmp_path):
    state = sf.trained_state(sf.TinyLDN())
    state["logits_ood.conv.weight"] = torch.zeros(3, 4, 1, 1)
    source_file = sf.write(dict(state), tmp_path / "ldn.pth", legacy=False)
    with pytest.raises(OodsegError, match=r"1 shape mismatches \(e\.g\. logits_ood\.conv\.weight \(3, 4, 1, 1\) "
                                          r"vs \(2, 4, 1, 1\)\)"):
        import_checkpoint(source_file, tmp_path / "ckpt", progress=False)


class _MakesDirectory:
    """Unpickling this calls ``os.mkdir(path)`` (a REDUCE of an arbitrary global)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_unexpected_global_is_refused_without_running(legacy, standins, tmp_path):
    marker = tmp_path / "marker"
    obj, _ = _source("densehybrid-ldn121")
    source_file = sf.write({"model": obj, "extra": _MakesDirectory(marker)}, tmp_path / "evil.pth", legacy=legacy)
    torch.load(source_file, weights_only=False)  # control: an unrestricted load does run it
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(OodsegError, match=r"evil\.pth: refused to unpickle: it needs global posix\.mkdir"):
        import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert not marker.exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b"PK\x03\x04truncated zip"], ids=["text", "zip"])
def test_unreadable_file_is_one_line(content, tmp_path):
    source_file = tmp_path / "broken.pth"
    source_file.write_bytes(content)
    with pytest.raises(OodsegError, match=r"broken\.pth: not a readable torch checkpoint[^\n]* \(\w") as info:
        import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "ckpt").exists()


def test_existing_output_needs_overwrite(standins, tmp_path):
    obj, state = _source("rpl")
    source_file = sf.write(obj, tmp_path / "res.pth", legacy=False)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "keep.txt").write_text("x")
    with pytest.raises(OodsegError, match="already exists; pass --overwrite"):
        import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert (tmp_path / "ckpt" / "keep.txt").exists()
    import_checkpoint(source_file, tmp_path / "ckpt", overwrite=True, progress=False)
    assert not (tmp_path / "ckpt" / "keep.txt").exists()
    _assert_imported(tmp_path / "ckpt", state, source_file, "rpl")


def test_cli_import_json_and_one_line_errors(standins, tmp_path):
    obj, state = _source("meta-ood")
    source_file = sf.write(obj, tmp_path / "epoch_4.pth", legacy=True)
    runner = CliRunner()
    result = runner.invoke(main, ["import", str(source_file), "--out", str(tmp_path / "ckpt"), "--json"])
    assert result.exit_code == 0, result.output
    assert '"format": "meta-ood"' in result.stdout
    _assert_imported(tmp_path / "ckpt", state, source_file, "meta-ood")
    again = runner.invoke(main, ["import", "--format", "rpl", str(source_file), "--out", str(tmp_path / "other")])
    assert again.exit_code == 2
    assert again.stderr.count("\n") == 1 and again.stderr.startswith("error: ")
    assert not (tmp_path / "other").exists()


def test_help_lists_every_format():
    result = CliRunner().invoke(main, ["import", "--help"])
    assert result.exit_code == 0
    assert all(name in "".join(result.stdout.split()) for name in FORMATS)  # help wraps at hyphens


# --- the real architectures (no stand-ins) ---
def _real_state(architecture: str, **params) -> OrderedDict:
    with torch.device("meta"):
        model = registry.build_model(architecture, num_classes=19, **params)
    return sf.trained_state(model)  # reads only key names, shapes and dtypes


def _assert_weights_equal(out: Path, state: OrderedDict) -> None:
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    assert set(written) == set(state)
    for key, value in state.items():
        assert torch.equal(written[key], value), key


@pytest.fixture
def ldn121_source(tmp_path):
    """``(source LDN-121 in eval mode, its state dict, DenseHybrid's bare file of it)``."""
    source_model = registry.build_model("ldn121", num_classes=19).eval()
    for name, buffer in source_model.named_buffers():  # BN statistics as after training (finite outputs)
        buffer.copy_(torch.randint(1, 9, buffer.shape) if buffer.dtype == torch.int64 else torch.rand(buffer.shape) + 0.5)
    state = OrderedDict((k, v.clone()) for k, v in source_model.state_dict().items())
    return source_model, state, sf.write(sf.bare_checkpoint(source_model, state), tmp_path / "ldn121.pt", legacy=False)


def test_ldn121_file_imports(ldn121_source, tmp_path):
    """DenseHybrid's bare LDN-121 state dict: 827 keys, 11,067,928 parameters, detected from its keys."""
    _, state, source_file = ldn121_source
    summary = import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert (summary["format"], summary["parameters"], summary["keys"]) == ("densehybrid-ldn121", 11_067_928, 827)
    _assert_weights_equal(tmp_path / "ckpt", state)


@pytest.mark.slow  # an LDN-121 forward takes seconds on a busy CPU
def test_ldn121_imported_network_runs_like_the_source(ldn121_source, tmp_path):
    source_model, _, source_file = ldn121_source
    import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    model, _ = load_checkpoint(tmp_path / "ckpt")
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected, got = source_model(images), model(images)
    assert expected.keys() == got.keys()
    for key in expected:
        assert expected[key].isfinite().all()
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)


@pytest.fixture(scope="session")
def nvidia_full_size(tmp_path_factory):
    """A full-size DeepWV3Plus in NVIDIA's legacy-serialised layout (548 MB; the SGD has not stepped)."""
    state = _real_state("deepwv3plus")
    checkpoint = {"state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
                  "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "momentum": 0.9, "params": [0, 1]}]},
                  "epoch": 174, "mean_iu": sf.np.float64(0.81), "command": "python train.py"}
    checkpoint["state_dict"][sf.NVIDIA_CRITERION_KEY] = torch.ones(19)
    path = sf.write(checkpoint, tmp_path_factory.mktemp("nvidia") / "cityscapes_best.pth", legacy=True)
    return path, state


def test_full_size_nvidia_file_imports(nvidia_full_size, tmp_path):
    source_file, state = nvidia_full_size
    summary = import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    assert (summary["format"], summary["parameters"], summary["keys"]) == ("nvidia-wrn38", 137_103_936, 268)
    _assert_weights_equal(tmp_path / "ckpt", state)


@pytest.mark.slow
def test_full_size_nvidia_checkpoint_loads_in_eval_mode(nvidia_full_size, tmp_path):
    source_file, state = nvidia_full_size
    import_checkpoint(source_file, tmp_path / "ckpt", progress=False)
    model, meta = load_checkpoint(tmp_path / "ckpt")
    assert not model.training and meta["source"]["format"] == "nvidia-wrn38"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.slow
@pytest.mark.parametrize("fmt, architecture, params", [
    ("rpl-corocl", "deepwv3plus-rpl", {"projector": True}),
    ("densehybrid-wrn38th", "deepwv3plus-th", {}),
])
def test_full_size_rpl_and_densehybrid_files_import(fmt, architecture, params, tmp_path):
    state = _real_state(architecture, **params)
    obj = ({"model": OrderedDict((f"branch1.{k}", v) for k, v in state.items()), "epoch": 40, "iteration": 1}
           if fmt.startswith("rpl") else dict(state))
    source_file = sf.write(obj, tmp_path / "published.pth", legacy=False)
    assert import_checkpoint(source_file, tmp_path / "ckpt", progress=False)["format"] == fmt
    _assert_weights_equal(tmp_path / "ckpt", state)
