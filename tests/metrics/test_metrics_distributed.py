"""all_reduce of metric states over 2 gloo processes equals one process seeing all frames."""
import os
import socket

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from oodseg.metrics import ComponentMetrics, DetectionMetrics, PixelMetrics, SegmentationMetrics
from oodseg.metrics.quantization import Float16Audit
from oodseg.metrics.smiyc import SmiycPixelMetrics


def frames():
    rng = np.random.default_rng(3)
    label = (rng.random((4, 40, 40)) < 0.2).astype(np.uint8)
    label[:, :4] = 255
    score = (rng.random((4, 40, 40)) + 0.5 * label).astype(np.float32)
    return score, label


def states(score, label, positions):
    pixel, pixel_exact = PixelMetrics(mode="streaming"), PixelMetrics(mode="exact")
    comp, det = ComponentMetrics(track="obstacle", min_pred=2, min_gt=2), DetectionMetrics()
    smiyc, audit = SmiycPixelMetrics(mode="streaming"), Float16Audit("m")
    seg = SegmentationMetrics(num_classes=1, ood_thresholds=(0.8,), mode="streaming")
    pixel.update(score, label)
    pixel_exact.update(score, label)
    comp.update(score, label, 0.8)
    det.update(score, label)
    smiyc.update(score, label, positions=positions)
    audit.update(score.astype("float32") * 100)  # float16 merges some of these levels
    seg.update(np.zeros_like(label), np.where(label == 1, 254, label), score)  # one class, outliers, void
    return pixel, pixel_exact, comp, det, smiyc, audit, seg


def results(metrics):
    return [m.summary() if isinstance(m, Float16Audit) else m.compute() for m in metrics]


def worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    score, label = frames()
    mine = states(score[rank::2], label[rank::2], range(rank, len(score), 2))
    for m in mine:
        m.all_reduce()
    if rank == 0:
        queue.put(results(mine))
    dist.destroy_process_group()


@pytest.mark.slow  # spawns two torch processes (~10-50 s on a busy machine)
def test_all_reduce_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    reduced = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
    score, label = frames()
    expected = results(states(score, label, range(len(score))))
    for i in (0, 2, 3, 4, 5, 6):  # every metric but exact pixel metrics: equal to the last digit
        assert reduced[i] == expected[i], i
    for key in ("AP", "AUROC", "FPR95"):  # exact mode gathers: same pixels, different concatenation order
        assert abs(reduced[1][key] - expected[1][key]) < 1e-12
