"""torch.distributed helpers: rank, rank-strided sharding and reduction of small states.

Everything works unchanged in a single process (rank 0 of 1). Under ``torchrun`` call
:func:`init` once; it picks ``gloo`` on CPU and ``nccl`` when CUDA is available. torch is
imported only by :func:`init` and when a process group exists, so a single process that never
needed torch (``oodseg evaluate`` of score files) does not pay for importing it.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Sequence, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def is_initialized() -> bool:
    if "torch.distributed" not in sys.modules:  # nothing imported it: no process group can exist
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True when the environment says this process is one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None) -> bool:
    """Initialise the default process group if launched by torchrun; return whether distributed.

    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    import torch
    import torch.distributed as dist

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def _dist():
    """``torch.distributed`` (imported on first use)."""
    import torch.distributed as dist

    return dist


def rank() -> int:
    return _dist().get_rank() if is_initialized() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th item starting at ``rank``."""
    return list(items[rank() :: world_size()])


def barrier() -> None:
    if is_initialized():
        _dist().barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in a single process); returns it."""
    if is_initialized():
        dist = _dist()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: T) -> list[T]:
    """Gather one picklable object from every rank (a list of length ``world_size``)."""
    if not is_initialized():
        return [obj]
    out: list = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if is_initialized():
        _dist().destroy_process_group()
