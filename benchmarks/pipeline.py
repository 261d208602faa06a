"""Throughput of the `oodseg score` and `oodseg evaluate` pipelines, as ratios measured in one run (issue 19).

    python benchmarks/pipeline.py            # SmallSegNet 256x512 + DeepLabv3+ R50 512x1024; evaluation at 512x1024
    python benchmarks/pipeline.py --quick    # smaller frames, fewer of them (seconds)
    python benchmarks/pipeline.py --only evaluate --official ~/road-anomaly-benchmark
    oodseg bench pipeline [--quick] [--only evaluate --official PATH]

(a) `oodseg score` with every logits-only method (msp, entropy, variation_ratio, margin, max_logit, energy,
    jsd) against the bare model forward over the same frames (preloaded tensors, no scores, no files); for
    SmallSegNet with --workers 0, 1, 2 and the default, and with gzip files; the bare forward is measured
    again next to each run. First a table of the hdf5 compressions (ms per map written and read, size)
    that chose the default.
    `oodseg score` runs in a fresh process on N and 2N frames; its steady-state rate is N / (t(2N) - t(N))
    (t: the score_dataset call), which removes start-up (model load, starting the workers). Goal >= 0.9x
    the bare forward.
(b) `oodseg evaluate` (SMIYC protocol, streaming tallies: pixel + component metrics) against the official SMIYC
    code: with `--official PATH` (a checkout of SegmentMeIfYouCan/road-anomaly-benchmark; never copied into
    oodseg) its own functions run frame by frame in this process, as its `metric --no-parallel` run, on the
    same files; without it, against the restatement of that computation in tests/metrics/. Prints the numbers
    (they must be equal), wall and CPU time of both (medians of 3, interleaved), the ratios for --workers
    0/1/2/default, and the CPU milliseconds per frame of each stage. Goal >= 10x the official throughput.
(c) Peak RSS of the `oodseg score` / `oodseg evaluate` process at N and 2N frames: it must not grow.

Random-weight networks (the speed of a forward does not depend on the weights). Times are medians where
repeated; the machine may be shared and loaded, so read the ratios, not the absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
from test_metrics_component import reference_frame_scores  # noqa: E402  (the official per-component loop)
from test_metrics_smiyc import official_reference  # noqa: E402  (the official binned pixel metrics)

from _cli import run_main  # noqa: E402
from _timing import median_time  # noqa: E402

LOGITS_ONLY = ("msp", "entropy", "variation_ratio", "margin", "max_logit", "energy", "jsd")
MODELS = {  # name: (architecture, params, frame size full, frame size quick)
    "SmallSegNet": ("small", {"num_classes": 19}, (256, 512), (128, 256)),
    "DeepLabv3+ R50": ("deeplabv3plus", {"num_classes": 19, "backbone": "resnet50"}, (512, 1024), (256, 512)),
}
#: a child process measuring one run: prints {"seconds" (the call, after the imports), "process_seconds",
#: "peak_rss_mib", "torch"} as the last line
CHILD = """
import json, resource, sys, time
started = time.perf_counter()
kind, kwargs = sys.argv[1], json.loads(sys.argv[2])
if kind == "score":
    from oodseg.workflows.score import score_dataset
    start = time.perf_counter()
    score_dataset(**kwargs)
else:
    from oodseg.data import open_dataset
    from oodseg.workflows.evaluate import evaluate_dataset
    start = time.perf_counter()
    root = kwargs.pop("root")
    evaluate_dataset(open_dataset("smiyc-anomaly", root), **kwargs)
end = time.perf_counter()
print(json.dumps({"seconds": end - start, "process_seconds": end - started,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": "torch" in sys.modules}))
"""


def street_image(rng, size: tuple[int, int]) -> np.ndarray:
    """A smooth uint8 RGB frame (gradients and boxes: compresses and decodes like a photo, not like noise)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(yy * 255 // h), (xx * 255 // w), ((yy + xx) * 127 // (h + w))], -1).astype(np.uint8)
    for _ in range(12):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        image[y:y + rng.integers(4, h // 4), x:x + rng.integers(4, w // 4)] = rng.integers(0, 256, 3)
    return image


def make_images(folder: Path, n: int, size: tuple[int, int], rng) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(street_image(rng, size)).save(folder / f"frame_{i:04d}.png")
    return folder


def run_child(kind: str, **kwargs) -> dict:
    """One measured run in a fresh interpreter (its own start-up, its own peak RSS)."""
    env = {**os.environ, "OODSEG_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(kwargs)], capture_output=True, text=True,
                          env=env, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"error: {kind} run failed: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- (a) scoring ---------------------------------------------------------------------------------
def bare_forward_fps(checkpoint: Path, images: Path, n: int) -> float:
    """Frames/s of the model alone: frames decoded beforehand, one forward per frame (median per frame)."""
    import torch
    from PIL import Image

    from oodseg.conventions import image_to_tensor
    from oodseg.models import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    tensors = [image_to_tensor(np.asarray(Image.open(p).convert("RGB")))[None]
               for p in sorted(images.glob("*.png"))[:n]]
    times = []
    with torch.no_grad():
        model(tensors[0])  # warm-up
        for tensor in tensors:
            start = time.perf_counter()
            model(tensor)
            times.append(time.perf_counter() - start)
    return 1 / statistics.median(times)


def compression_table(tmp: Path, rng, sizes) -> None:
    """ms per written map (built in memory, as `oodseg score` does), ms per read with plain h5py (the official
    SMIYC reader) and size for each of oodseg.data.io.COMPRESSIONS, on float32 maps bilinearly upsampled from
    a quarter of the size (like a stride-4 head's scores); every file is read back and compared."""
    import h5py
    import torch

    from oodseg.data.io import COMPRESSIONS, hdf5_image
    from oodseg.workflows.pipeline import finish_maps

    print("[compression] name       size       write ms/map  read ms/map  bytes/raw  (median of 5, one core)")
    for h, w in sizes:
        head = torch.from_numpy(rng.random((1, h // 4, w // 4), dtype=np.float32))
        value = finish_maps(head, (h, w), False)[0].numpy()
        for name in COMPRESSIONS:
            data = hdf5_image(value, name)
            path = tmp / f"compression-{name}-{h}.hdf5"
            path.write_bytes(data)

            def read():
                with h5py.File(path, "r") as f:
                    return f["value"][:]

            if not np.array_equal(read(), value):
                raise SystemExit(f"error: {path}: read back differs from the written map")
            write_ms = 1000 * median_time(lambda: hdf5_image(value, name), 5)
            print(f"[compression] {name:<10} {h}x{w:<8} {write_ms:11.1f}  {1000 * median_time(read, 5):11.1f}  "
                  f"{len(data) / value.nbytes:9.3f}")


def score_fps(checkpoint: Path, images: dict[int, Path], out: Path, frames: int, **options) -> tuple[float | None, dict]:
    """Steady-state frames/s of `oodseg score` (fresh processes on N and 2N frames: N / (t(2N) - t(N)); None when
    other load made the 2N run no longer than the N run) and the two runs' measurements."""
    runs = {n: run_child("score", checkpoint=str(checkpoint), images=str(images[n]), methods=list(LOGITS_ONLY),
                         out=str(out / f"{n}"), **options) for n in (frames, 2 * frames)}
    extra = runs[2 * frames]["seconds"] - runs[frames]["seconds"]
    return (frames / extra if extra > 0 else None), runs


def bench_scoring(tmp: Path, rng, quick: bool, frames: int) -> None:
    import torch

    from oodseg.models import build_model, save_checkpoint
    from oodseg.workflows.workers import default_workers

    compression_table(tmp, rng, [(128, 256), (256, 512)] if quick else [(256, 512), (512, 1024)])
    cores = len(os.sched_getaffinity(0))
    for name, (arch, params, size, quick_size) in MODELS.items():
        size = quick_size if quick else size
        small = arch == "small"
        n = 4 * frames if small else frames  # a tiny model: more frames, so that N frames outlast start-up noise
        torch.manual_seed(0)
        checkpoint = tmp / f"ckpt-{arch}"
        save_checkpoint(build_model(arch, **params).eval(), checkpoint, arch, params)
        images = {k: make_images(tmp / f"images-{arch}-{k}", k, size, rng) for k in (n, 2 * n)}
        # workers 0 (inline), 1, 2 and the default for the small model, inline and the default for the large one;
        # gzip files for comparison
        settings = [(w, "none") for w in sorted({0, 1, 2, default_workers()} if small else {0, default_workers()})]
        settings += [(default_workers(), "gzip")] if small else []
        for workers, compression in settings:
            bare = bare_forward_fps(checkpoint, images[2 * n], 2 * n)  # next to each run: the load changes
            steady, runs = score_fps(checkpoint, images, tmp / f"out-{arch}-{workers}-{compression}", n,
                                     workers=workers, compression=compression)
            rate = (f"{steady:.2f} frames/s steady-state" if steady else "unmeasured (2N frames took no longer: load)")
            ratio = f"{steady / bare:.2f}x" if steady else "?"
            print(f"[score] {name} {size[0]}x{size[1]}, {len(LOGITS_ONLY)} logits-only methods, workers {workers}"
                  f"{' (default)' if workers == default_workers() else ''}, compression {compression}: bare forward "
                  f"{bare:.2f} frames/s (torch threads {torch.get_num_threads()}, {cores} cores); oodseg score "
                  f"{rate} (N={n} vs 2N: {runs[n]['seconds']:.1f}s, {runs[2 * n]['seconds']:.1f}s whole runs) -> "
                  f"{ratio} the bare forward (goal >= 0.9x)")
        print(f"[memory] oodseg score {name}: peak RSS {runs[n]['peak_rss_mib']:.0f} MiB at {n} frames, "
              f"{runs[2 * n]['peak_rss_mib']:.0f} MiB at {2 * n} frames (must not grow)")


# -- (b) evaluation -----------------------------------------------------------------------------
def make_smiyc(root: Path, n: int, size: tuple[int, int], rng) -> Path:
    """SMIYC anomaly-track layout with float32 score files; returns the scores folder."""
    from PIL import Image

    from oodseg.data import write_score

    h, w = size
    scores_dir = root.parent / "scores" / "msp" / root.name
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    for i in range(n):
        fid = f"frame_{i:04d}"
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / f"{fid}.jpg")
        label = np.zeros((h, w), np.uint8)
        label[: h // 5] = 255
        score = rng.random((h, w), dtype=np.float32) * 0.5
        for _ in range(6):
            y, x = rng.integers(h // 5, h - h // 8), rng.integers(0, w - w // 8)
            dy, dx = rng.integers(4, h // 8), rng.integers(4, w // 8)
            label[y:y + dy, x:x + dx] = 1
            score[y:y + dy, x:x + dx] += 0.35
        for _ in range(3):  # false positives
            y, x = rng.integers(h // 5, h - 30), rng.integers(0, w - 30)
            score[y:y + rng.integers(3, 30), x:x + rng.integers(3, 30)] += 0.6
        Image.fromarray(label).save(root / "labels_masks" / f"{fid}_labels_semantic.png")
        write_score(scores_dir / f"{fid}.hdf5", score)
    return scores_dir


def restated_evaluation(root: Path, scores_dir: Path) -> dict:
    """The official SMIYC evaluation as restated in tests/metrics/ (used without ``--official``): h5py + PIL
    reads, binned pixel metrics, the per-component loop."""
    import h5py
    from PIL import Image

    frames = []
    for label_path in sorted((root / "labels_masks").glob("*_labels_semantic.png")):
        fid = label_path.name[: -len("_labels_semantic.png")]
        with h5py.File(scores_dir / f"{fid}.hdf5", "r") as f:
            frames.append((f["value"][:], np.asarray(Image.open(label_path))))
    pixel = official_reference([s for s, _ in frames], [y for _, y in frames])
    siou, ppv = [], []
    for score, label in frames:
        s, p = reference_frame_scores(score, label, pixel["best_F1_threshold"], 500, 100)
        siou += list(s)
        ppv += list(p)
    return {"AP": pixel["AP"], "FPR95": pixel["FPR95"], "sIoU": float(np.mean(siou)), "PPV": float(np.mean(ppv))}


# -- the official SMIYC code, from the user's checkout (--official PATH; never copied into oodseg) ---------
#: Third-party modules the official package imports at module level for its tables, notebooks and plots
#: only (never called by the metrics): where not installed, empty stand-ins take their place in sys.modules.
UNUSED_BY_THE_METRICS = {"pandas": ("DataFrame", "Series"), "IPython": (), "IPython.display": ("display_html",)}


class AttributeDict(dict):
    """Stand-in for ``easydict.EasyDict`` where easydict is not installed: a dict whose keys are also
    attributes, nested dicts converted (all the official code relies on)."""

    def __init__(self, data=None, **more):
        super().__init__()
        for key, value in {**(data or {}), **more}.items():
            self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, AttributeDict(value) if type(value) is dict else value)

    __setattr__ = __setitem__

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _stand_ins() -> list[str]:
    """Put stand-ins for the missing modules the official code imports but the metrics never use; their names."""
    import importlib.util
    import types

    placed = []
    wanted = {**UNUSED_BY_THE_METRICS, "easydict": ("EasyDict",)}
    for name, attributes in wanted.items():
        top = name.split(".")[0]
        if name in sys.modules or (top not in placed and importlib.util.find_spec(top) is not None):
            continue
        module = types.ModuleType(name)
        for attribute in attributes:
            setattr(module, attribute, AttributeDict if name == "easydict" else None)
        sys.modules[name] = module
        placed.append(name)
    return placed


class _NumpyOneNames:
    """Within the block: ``np.trapz`` (removed in numpy 2.4; the official AUROC calls it) is ``np.trapezoid``,
    the same function; ``matplotlib.cm.get_cmap`` (removed in matplotlib 3.9; the official visualisation
    module calls it at import) is ``matplotlib.colormaps.get_cmap``. Nothing else is changed."""

    def __enter__(self):
        import matplotlib
        import matplotlib.cm

        self.added = []
        for owner, name, value in ((np, "trapz", getattr(np, "trapezoid", None)),
                                   (matplotlib.cm, "get_cmap", lambda n, lut=None: matplotlib.colormaps.get_cmap(n)
                                    if lut is None else matplotlib.colormaps.get_cmap(n).resampled(lut))):
            if not hasattr(owner, name):
                setattr(owner, name, value)
                self.added.append((owner, name))
        return self

    def __exit__(self, *exc):
        for owner, name in self.added:
            delattr(owner, name)


def import_official(path: Path):
    """The official road-anomaly-benchmark modules from the checkout ``path``: a namespace of the classes used."""
    import types
    import warnings

    from oodseg.errors import OodsegError

    path = Path(path).expanduser().resolve()
    if not (path / "road_anomaly_benchmark" / "metrics" / "pixel_classification.py").is_file():
        raise OodsegError(f"--official: {path}: not a checkout of SegmentMeIfYouCan/road-anomaly-benchmark "
                          "(no road_anomaly_benchmark/metrics/pixel_classification.py)")
    placed = _stand_ins()
    sys.path.insert(0, str(path))
    try:
        with warnings.catch_warnings(), _NumpyOneNames():
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy.ndimage.measurements, matplotlib
            from road_anomaly_benchmark.datasets.dataset_io import ChannelLoaderHDF5
            from road_anomaly_benchmark.datasets.tracks import DatasetAnomalyTrack
            from road_anomaly_benchmark.metrics.instance_segmentation import MetricSegment
            from road_anomaly_benchmark.metrics.pixel_classification import MetricPixelClassification
    except ImportError as exc:
        raise OodsegError(f"--official: {path}: cannot import the official code ({exc})") from None
    finally:
        sys.path.remove(str(path))
    commit = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return types.SimpleNamespace(
        ChannelLoaderHDF5=ChannelLoaderHDF5, DatasetAnomalyTrack=DatasetAnomalyTrack, MetricSegment=MetricSegment,
        MetricPixelClassification=MetricPixelClassification, stand_ins=placed, path=path,
        version=commit.stdout.strip() if commit.returncode == 0 else "not a git checkout")


def _official_metric(cls, name: str):
    """The official metric object of configuration ``name`` (as its MetricRegistry builds it)."""
    return cls(next(cfg for cfg in cls.configs if cfg["name"] == name))


def official_evaluation(official, root: Path, scores_dir: Path) -> dict:
    """One method evaluated by the official code in one process, as its ``metric --no-parallel`` run does.

    Per frame: the official dataset reader (``dset[i]``: image + label file, label_pixel_gt) and score
    reader (h5py), ``PixBinaryClass.process_frame``; its ``aggregate`` gives the curve and θ (best F1).
    Then per frame again the readers and ``SegEval-AnomalyTrack.process_frame`` at θ; its ``aggregate``.
    Saving the curves and plotting are left out. θ is handed over as the float ``aggregate`` returns
    (the official CLI stores it in an HDF5 file and reads it back as a numpy float64).
    """
    import contextlib
    import io

    dset = official.DatasetAnomalyTrack({"name": "bench", "dir_root": str(root), "img_fmt": "jpg",
                                         "classes": {"usual": 0, "anomaly": 1, "ignore": 255}})
    scores = official.ChannelLoaderHDF5(str(scores_dir / "{fid}.hdf5"))

    def frames():
        for i in range(len(dset)):
            frame = dset[i]
            yield frame, np.squeeze(scores.read(fid=frame.fid))

    pixel = _official_metric(official.MetricPixelClassification, "PixBinaryClass")
    segment = _official_metric(official.MetricSegment, "SegEval-AnomalyTrack")
    with contextlib.redirect_stdout(io.StringIO()), _NumpyOneNames():  # the official aggregates print
        curve = pixel.aggregate([pixel.process_frame(anomaly_p=p, method_name="bench", visualize=False, **frame)
                                 for frame, p in frames()], "bench", "bench")
        segment.cfg.thresh_p = curve.best_f1_threshold
        segment.cfg.default_instancer = True
        components = segment.aggregate([segment.process_frame(anomaly_p=p, method_name="bench", visualize=False,
                                                              **frame) for frame, p in frames()], "bench", "bench")
    return {"AP": float(curve.area_PRC), "FPR95": float(curve.tpr95_fpr), "sIoU": float(components.sIoU_gt),
            "PPV": float(components.prec_pred), "mean_F1": float(components.f1_mean)}


def wall_and_cpu(work) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process and its finished children) of ``work()``."""
    before, start = os.times(), time.perf_counter()
    work()
    wall, after = time.perf_counter() - start, os.times()
    return wall, sum(after[:4]) - sum(before[:4])


def stage_breakdown(root: Path, scores_dir: Path, official) -> list[str]:
    """CPU milliseconds per frame (median over the frames) of each stage, oodseg's and the official code's."""
    from oodseg.data import open_dataset
    from oodseg.data.io import find_score, read_score
    from oodseg.metrics.component import frame_component_scores
    from oodseg.metrics.smiyc import frame_bins

    stages: dict[str, list[float]] = {}

    def timed(name, work):
        start = time.process_time()
        out = work()
        stages.setdefault(name, []).append(1000 * (time.process_time() - start))
        return out

    dataset = open_dataset("smiyc-anomaly", root)
    for i in range(len(dataset)):
        label = timed("oodseg: read label", lambda: dataset.read_label(i))
        path = find_score(scores_dir, dataset.frame(i).fid)
        score = timed("oodseg: read score", lambda: read_score(path, native=True))
        roi = label != 255
        timed("oodseg: pixel bins", lambda: frame_bins(score[roi], label[roi] == 1))
        timed("oodseg: components", lambda: frame_component_scores(score, label, 0.6, 500, 100))
    if official is not None:
        dset = official.DatasetAnomalyTrack({"name": "bench", "dir_root": str(root), "img_fmt": "jpg",
                                             "classes": {"usual": 0, "anomaly": 1, "ignore": 255}})
        reader = official.ChannelLoaderHDF5(str(scores_dir / "{fid}.hdf5"))
        pixel = _official_metric(official.MetricPixelClassification, "PixBinaryClass")
        segment = _official_metric(official.MetricSegment, "SegEval-AnomalyTrack")
        segment.cfg.thresh_p = 0.6
        for i in range(len(dset)):
            frame = timed("official: dset[i] (image + label)", lambda: dset[i])
            score = timed("official: read score", lambda: np.squeeze(reader.read(fid=frame.fid)))
            timed("official: PixBinaryClass", lambda: pixel.process_frame(anomaly_p=score, visualize=False, **frame))
            timed("official: SegEval", lambda: segment.process_frame(anomaly_p=score, visualize=False, **frame))
    return [f"{name} {statistics.median(ms):.1f}" for name, ms in stages.items()]


def bench_evaluation(tmp: Path, rng, quick: bool, frames: int, official) -> None:
    """Part (b); ``official``: :func:`import_official`'s namespace, or None for the restatement."""
    from oodseg.data import open_dataset
    from oodseg.workflows.evaluate import evaluate_dataset
    from oodseg.workflows.workers import default_workers

    size = (256, 512) if quick else (512, 1024)
    roots = {}
    for n in (frames, 2 * frames):
        roots[n] = tmp / f"smiyc-{n}" / "anomaly"
        make_smiyc(roots[n], n, size, rng)
    root, scores_dir = roots[frames], roots[frames].parent / "scores" / "msp" / "anomaly"
    dataset = open_dataset("smiyc-anomaly", root)

    def ours(workers: int) -> dict:
        return evaluate_dataset(dataset, scores_dir, protocol="smiyc", mode="streaming", workers=workers)

    if official is None:
        print("[evaluate] reference: the official SMIYC computation as restated in tests/metrics/ "
              "(no --official PATH: give a checkout of SegmentMeIfYouCan/road-anomaly-benchmark to time its own code)")
        reference = partial(restated_evaluation, root, scores_dir)
    else:
        print(f"[evaluate] reference: the official SMIYC code at {official.path} ({official.version}), frame by "
              f"frame in this process as its --no-parallel run (stand-ins for the modules it imports for plots "
              f"only: {', '.join(official.stand_ins) or 'none needed'})")
        reference = partial(official_evaluation, official, root, scores_dir)
    expected, result = reference(), ours(0)
    print(f"[evaluate] numbers: official " + ", ".join(f"{k} {v:.6f}" for k, v in expected.items())
          + "; |oodseg - official| " + ", ".join(f"{k} {abs(result[k] - v):.1e}" for k, v in expected.items()))
    jobs = {"official": reference, **{workers: partial(ours, workers)
                                      for workers in sorted({0, 1, 2, default_workers()})}}
    runs: dict = {key: [] for key in jobs}
    for _ in range(3):  # interleaved, so that a change of the machine's load hits every variant alike
        for key, work in jobs.items():
            runs[key].append(wall_and_cpu(work))
    wall = {key: statistics.median(w for w, _ in times) for key, times in runs.items()}
    cpu = {key: statistics.median(c for _, c in times) for key, times in runs.items()}
    print(f"[evaluate] {frames} frames {size[0]}x{size[1]}, SMIYC protocol, pixel + component metrics "
          f"(median of 3, load average {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores): "
          f"official {wall['official']:.2f}s wall, {cpu['official']:.2f}s CPU")
    for key in jobs:
        if key != "official":
            print(f"[evaluate] oodseg --workers {key}: {wall[key]:.2f}s wall, {cpu[key]:.2f}s CPU -> "
                  f"{wall['official'] / wall[key]:.1f}x the official throughput (wall), "
                  f"{cpu['official'] / cpu[key]:.1f}x per CPU second (goal >= 10x)")
    print("[evaluate] CPU ms per frame: " + "; ".join(stage_breakdown(root, scores_dir, official)))
    children = {n: run_child("evaluate", root=str(roots[n]), protocol="smiyc", mode="streaming", workers=0,
                             scores_dir=str(roots[n].parent / "scores" / "msp" / "anomaly")) for n in (frames, 2 * frames)}
    peak = {n: f"{children[n]['peak_rss_mib']:.0f} MiB at {n} frames" for n in children}
    print(f"[memory] oodseg evaluate (smiyc protocol, streaming): peak RSS {peak[frames]}, {peak[2 * frames]} "
          f"(pass 1 keeps up to 512 MiB of decoded frames for pass 2); whole process {children[frames]['process_seconds']:.2f}s "
          f"incl. start-up, torch imported: {children[frames]['torch']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller frames, fewer of them")
    parser.add_argument("--only", choices=("score", "evaluate"), default=None, help="run one part")
    parser.add_argument("--official", type=Path, default=None, metavar="PATH",
                        help="a checkout of SegmentMeIfYouCan/road-anomaly-benchmark: time (b) against its own code "
                             "(default: against the restatement in tests/metrics/)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    official = import_official(args.official) if args.official and args.only in (None, "evaluate") else None
    with tempfile.TemporaryDirectory(prefix="oodseg-bench-pipeline-") as tmp:
        if args.only in (None, "score"):
            bench_scoring(Path(tmp), rng, args.quick, 2 if args.quick else 4)
        if args.only in (None, "evaluate"):
            bench_evaluation(Path(tmp), rng, args.quick, 8 if args.quick else 20, official)


if __name__ == "__main__":
    run_main(main)
