"""Score files never change a result (SPEC §7): for every registered score, ``oodseg score`` files
evaluated by ``oodseg evaluate`` give the metrics that scikit-learn computes on the maps held in
memory (AP/AUROC/FPR95 within 1e-4, best-F1 threshold and component metrics identical). The
float16 submission mode warns with the measured change; evaluation warns on coarse files."""
import json
import math

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from oodseg import scores
from oodseg.adapter import ModelAdapter
from oodseg.cli import main
from oodseg.conventions import image_to_tensor, resize_map
from oodseg.data import open_dataset
from oodseg.data.synthetic import generate
from oodseg.data.transforms import label_to_tensor
from oodseg.mask_adapter import MaskAdapter, is_mask_classification
from oodseg.metrics.component import ComponentMetrics
from oodseg.models import build_model, load_checkpoint, save_checkpoint
from oodseg.scores.base import REGISTRY

from model_fixtures import confident_checkpoint

TINY = {"num_classes": 19, "widths": [4, 8, 8], "aspp_channels": 8, "low_channels": 4, "decoder_channels": 8}
FRAMES = {"train": 3, "val": 1, "anomaly": 3, "obstacle": 1, "shifted": 1, "outliers": 1}
SEEDED = {"mc_dropout": {"seed": 0}}  # only the dropout masks fixed; every other parameter at its default
OOD_HEAD = "ood_logits"  # scores that read this extra head run on an LDN-121 (DenseHybrid's network)
MASKS = "masks"  # scores of per-query outputs run on a small-mask2former with a negative class; the rest on SmallSegNet
MASK_ARCH = {"num_classes": 19, "widths": [4, 8, 8], "hidden": 16, "queries": 5, "heads": 2, "feedforward": 16,
             "negative_class": True}


def _needs_ood_head(name: str) -> bool:
    return OOD_HEAD in REGISTRY[name].needs


def _needs_masks(name: str) -> bool:
    return MASKS in REGISTRY[name].needs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny convolutions run fastest on one thread (two threads stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    generate(root / "synth", seed=3, size=(96, 192), frames=FRAMES, progress=False)
    return root, confident_checkpoint(root / "ckpt", TINY, 0), confident_checkpoint(root / "member", TINY, 1)


@pytest.fixture(scope="module")
def hybrid_checkpoint(setup):
    """A randomly initialised LDN-121 (it has DenseHybrid's 2-way OoD head) saved as an oodseg checkpoint."""
    torch.manual_seed(0)
    model = build_model("ldn121", num_classes=19)
    save_checkpoint(model, setup[0] / "ldn", "ldn121", {"num_classes": 19})
    return setup[0] / "ldn"


@pytest.fixture(scope="module")
def mask_checkpoint(setup):
    """A randomly initialised small-mask2former with UNO's negative class, saved as an oodseg checkpoint."""
    torch.manual_seed(0)
    save_checkpoint(build_model("small-mask2former", **MASK_ARCH), setup[0] / "m2f", "small-mask2former", MASK_ARCH)
    return setup[0] / "m2f"


@pytest.fixture(scope="module")
def memory_maps(setup, hybrid_checkpoint, mask_checkpoint):
    root, ckpt, member = setup
    hybrid = _in_memory_maps(root, hybrid_checkpoint, member, [n for n in scores.available() if _needs_ood_head(n)])
    masks = _in_memory_maps(root, mask_checkpoint, member, [n for n in scores.available() if _needs_masks(n)])
    pixel = [n for n in scores.available() if not _needs_ood_head(n) and not _needs_masks(n)]
    return {**_in_memory_maps(root, ckpt, member, pixel), **hybrid, **masks}


@pytest.fixture(scope="module")
def labels(setup):
    data = open_dataset("smiyc-anomaly", setup[0] / "synth" / "anomaly")
    return [data.read_label(i) for i in range(len(data))]


def _cli(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def _score_args(root, ckpt, member, methods):
    args = ["score", "--checkpoint", ckpt, "--images", root / "synth" / "anomaly"]
    if {"sml", "mahalanobis"} & set(methods):
        args += ["--fit-data", root / "synth" / "cityscapes", "--fit-frames", FRAMES["train"]]
    if "maskomaly" in methods:  # fitted on the anomaly labels of the scored track itself (files vs memory only)
        args += ["--fit-data", root / "synth" / "anomaly", "--fit-frames", FRAMES["anomaly"]]
    if "ensemble" in methods:
        args += ["--ensemble", member]
    for name in methods:
        args += ["--method", name] + [f"--param={name}.{k}={v}" for k, v in SEEDED.get(name, {}).items()]
    return args


def _in_memory_maps(root, ckpt, member, names) -> dict[str, list[np.ndarray]]:
    """The scores ``names`` on every anomaly frame through the Python API, float32 at image size."""
    model, _ = load_checkpoint(ckpt)
    partner, _ = load_checkpoint(member)
    mask_model = is_mask_classification(model)
    adapter = MaskAdapter(model) if mask_model else ModelAdapter(model, capture_block=True)
    scorers = {name: scores.get(name, **SEEDED.get(name, {}), **({"models": [model, partner]}
                                                                  if name == "ensemble" else {}))
               for name in names}
    fit = (open_dataset("smiyc-anomaly", root / "synth" / "anomaly") if mask_model else
           open_dataset("cityscapes", root / "synth" / "cityscapes", split="train", labels="auto"))
    with torch.no_grad():
        pairs = [(adapter(image_to_tensor(s.image)[None]), label_to_tensor(s.label)[None]) for s in fit]
    for scorer in scorers.values():
        if scorer.needs_fit:
            scorer.fit((o for o, _ in pairs), (y for _, y in pairs))
    maps = {scorer.key: [] for scorer in scorers.values()}
    for sample in open_dataset("smiyc-anomaly", root / "synth" / "anomaly", labels="none"):
        images = image_to_tensor(sample.image)[None]
        with torch.no_grad():
            out = adapter(images)
        for scorer in scorers.values():
            value = scorer(adapter, images) if scorer.runs_model else scorer(out)
            with torch.no_grad():
                maps[scorer.key].append(resize_map(value.detach().float(), images.shape[-2:])[0].numpy())
    adapter.close()
    return maps


def _reference_metrics(maps: list[np.ndarray], labels: list[np.ndarray]) -> dict:
    """scikit-learn on the pooled valid pixels; θ = the highest best-F1 threshold; components at θ."""
    valid = [y != 255 for y in labels]
    s = np.concatenate([m[v] for m, v in zip(maps, valid)]).astype(np.float64)
    y = np.concatenate([lab[v] == 1 for lab, v in zip(labels, valid)])
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
    theta = float(thresholds[len(f1) - 1 - int(np.argmax(f1[::-1]))])
    components = ComponentMetrics(track="anomaly")
    for m, lab in zip(maps, labels):
        components.update(m, lab, theta)
    return {"AP": average_precision_score(y, s), "AUROC": roc_auc_score(y, s),
            "FPR95": float(fpr[np.argmax(tpr >= 0.95)]), "best_F1_threshold": theta, **components.compute()}


def _same(a, b) -> bool:
    return (a is None and (b is None or math.isnan(b))) or a == b


def test_files_evaluate_like_the_in_memory_maps_for_every_registered_score(setup, hybrid_checkpoint, mask_checkpoint,
                                                                           memory_maps, labels, tmp_path):
    root, ckpt, member = setup
    out = tmp_path / "scores"
    keys = []
    groups = ((ckpt, lambda n: not _needs_ood_head(n) and not _needs_masks(n)), (hybrid_checkpoint, _needs_ood_head),
              (mask_checkpoint, _needs_masks))
    for checkpoint, member_of in groups:
        names = [n for n in scores.available() if member_of(n)]
        result = _cli(*_score_args(root, checkpoint, member, names), "--out", out / checkpoint.name, "--json")
        assert result.exit_code == 0, result.output
        keys += [(checkpoint.name, key) for key in json.loads(result.stdout)["methods"]]
    assert len(keys) == len(scores.available()) == 23
    assert sorted(memory_maps) == sorted(key for _, key in keys)
    assert all((y == 1).any() and (y == 0).any() for y in labels)
    for folder, key in keys:
        report = tmp_path / f"{key}.json"
        evaluated = _cli("evaluate", "--root", root / "synth" / "anomaly", "--scores", out / folder / key / "anomaly",
                         "--protocol", "exact", "--save", report)  # scikit-learn is the exact sweep
        assert evaluated.exit_code == 0, evaluated.output
        assert "warning" not in evaluated.output, evaluated.output
        got = json.loads(report.read_text())
        expected = _reference_metrics(memory_maps[key], labels)
        for metric in ("AP", "AUROC", "FPR95"):
            assert got[metric] == pytest.approx(expected[metric], abs=1e-4), (key, metric)
        for metric in ("best_F1_threshold", "sIoU", "PPV", "mean_F1", "n_gt_components", "n_pred_components"):
            assert _same(got[metric], expected[metric]), (key, metric, got[metric], expected[metric])
        with h5py.File(out / folder / key / "anomaly" / "anomaly_0000.hdf5", "r") as f:
            assert f["value"].dtype == np.float32 and f["value"].compression is None  # default: uncompressed


def test_float16_submission_warns_with_the_measured_change(setup, memory_maps, labels, tmp_path):
    root, ckpt, member = setup
    result = _cli(*_score_args(root, ckpt, member, ["odin", "msp"]), "--out", tmp_path / "f16", "--dtype", "float16",
                  "--json")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    odin = next(line for line in warnings if line.startswith("warning: odin: "))
    assert "float16 storage merges distinct scores on 3 of 3 frames" in odin and "AP " in odin and "AUROC " in odin
    audit = json.loads(result.stdout)["float16"]["odin"]
    assert audit["alters_ranking"] and audit["frames_merged"] == 3
    assert audit["median_levels"]["float16"] < audit["median_levels"]["float32"]
    with h5py.File(tmp_path / "f16" / "odin" / "anomaly" / "anomaly_0000.hdf5", "r") as f:
        assert f["value"].dtype == np.float16
    # the audit's float32 AP is the in-memory AP (scikit-learn), its float16 AP that of the rounded maps
    maps = memory_maps["odin"]
    valid = np.concatenate([y.ravel() != 255 for y in labels])
    y = np.concatenate([lab.ravel() == 1 for lab in labels])[valid]
    for dtype in ("float32", "float16"):
        s = np.concatenate([m.astype(dtype).ravel() for m in maps])[valid]
        assert audit["AP"][dtype] == pytest.approx(average_precision_score(y, s), abs=1e-9)
        assert audit["AUROC"][dtype] == pytest.approx(roc_auc_score(y, s), abs=1e-9)


def _smiyc_frame(folder, values):
    """One SMIYC-layout frame 20×30 (left half anomaly) and its score file with the given values."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "labels_masks").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "images" / "f.jpg")
    label = np.zeros((20, 30), np.uint8)
    label[:, :15] = 1
    Image.fromarray(label).save(folder / "labels_masks" / "f_labels_semantic.png")
    scores_dir = folder.parent / f"{folder.name}-scores"
    scores_dir.mkdir()
    with h5py.File(scores_dir / "f.hdf5", "w") as f:
        f.create_dataset("value", data=values.astype(np.float16))
    return scores_dir


@pytest.mark.parametrize("levels, warned", [(3, True), (49, True), (50, False)])
def test_evaluate_warns_once_on_a_coarse_file(tmp_path, rng, levels, warned):
    values = rng.permutation(np.resize(np.arange(levels, dtype=np.float32), 600)).reshape(20, 30)
    scores_dir = _smiyc_frame(tmp_path / "track", values)
    result = _cli("evaluate", "--root", tmp_path / "track", "--scores", scores_dir)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    expected = f"warning: {scores_dir / 'f.hdf5'}: only {levels} distinct score values on a frame with both classes"
    assert [line.startswith(expected) for line in lines] == ([True] if warned else [])


@pytest.mark.slow  # spawns two torch processes
def test_float16_audit_under_torchrun_equals_one_process(setup, tmp_path, run_oodseg):
    root, ckpt, member = setup
    common = [*_score_args(root, ckpt, member, ["odin", "entropy"]), "--dtype", "float16", "--json"]
    single = run_oodseg(*common, "--out", tmp_path / "one")
    double = run_oodseg(*common, "--out", tmp_path / "two", nproc=2)
    assert json.loads(double.stdout)["float16"] == json.loads(single.stdout)["float16"]
    for proc in (single, double):
        assert [line.split(":")[1] for line in proc.stderr.splitlines() if line.startswith("warning: ")] == \
            [" odin", " entropy"]
