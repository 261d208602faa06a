"""all_reduce of metric states over 2 gloo processes equals one process seeing all frames."""
import os
import socket

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from oodseg.metrics import ComponentMetrics, DetectionMetrics, PixelMetrics


def frames():
    rng = np.random.default_rng(3)
    label = (rng.random((4, 40, 40)) < 0.2).astype(np.uint8)
    label[:, :4] = 255
    score = (rng.random((4, 40, 40)) + 0.5 * label).astype(np.float32)
    return score, label


def states(score, label):
    pixel, pixel_exact = PixelMetrics(mode="streaming"), PixelMetrics(mode="exact")
    comp, det = ComponentMetrics(track="obstacle", min_pred=2, min_gt=2), DetectionMetrics()
    pixel.update(score, label)
    pixel_exact.update(score, label)
    comp.update(score, label, 0.8)
    det.update(score, label)
    return pixel, pixel_exact, comp, det


def worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    score, label = frames()
    results = []
    for m in states(score[rank::2], label[rank::2]):
        m.all_reduce()
        results.append(m.compute())
    if rank == 0:
        queue.put(results)
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
    expected = [m.compute() for m in states(*frames())]
    assert reduced[0] == expected[0] and reduced[2] == expected[2] and reduced[3] == expected[3]
    for key in ("AP", "AUROC", "FPR95"):  # exact mode gathers: same pixels, different concatenation order
        assert abs(reduced[1][key] - expected[1][key]) < 1e-12
