"""The ``oodseg train`` engine: one training loop for every recipe (:mod:`oodseg.training.recipe`).

The loop runs in one process or under ``torchrun`` (DDP: gloo on CPU, nccl on GPU), writes
``OUT/log.jsonl`` (every loss term), atomic checkpoints ``OUT/checkpoint/`` (loadable by
:func:`oodseg.models.load_checkpoint`) plus ``OUT/trainer_state.pt`` (step, module,
optimizer, scheduler, RNG states, recipe state) and ``OUT/train.json`` (schema
``oodseg.train``). ``resume=True`` continues exactly where an interrupted run stopped.
Determinism: the sample order is a seeded permutation per epoch, the augmentation of a
sample is seeded by its position in that stream, and the recipe RNG by (seed, step, rank),
so a resumed run and a run on several ranks (same global batch) see the same data as one
uninterrupted process. DDP averages gradients of per-rank means; this equals the
single-process gradient when every rank has the same number of pixels in each loss term
(true for crops without ignore pixels). Batch norm: ``bn="train"`` (per-rank statistics),
``"frozen"`` (eval-mode statistics, affine parameters still trained; makes DDP match one
process exactly) or ``"sync"`` (SyncBatchNorm under DDP).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from oodseg import distributed as dist_utils
from oodseg.atomic import atomic_directory, atomic_path, remove_stale, write_json, write_text
from oodseg.errors import OodsegError
from oodseg.progress import track
from oodseg.training.config import TrainConfig
from oodseg.training.data import open_split, resolve_data_root
from oodseg.training.recipe import Recipe, get_recipe, segmentation_logits, unwrap


# --- data order ----------------------------------------------------------------------------------

def sample_seed(seed: int, position: int) -> int:
    """Seed of the sample at ``position`` in the training stream (drives its augmentation and outliers)."""
    return int(np.random.SeedSequence([seed, position]).generate_state(1)[0])


class StepBatchSampler(torch.utils.data.Sampler):
    """This rank's share of the global batches for steps ``start_step..total_steps-1``.

    The stream is the concatenation of seeded permutations of ``range(num_items)`` (one per
    epoch); global batch ``s`` is stream positions ``[s·B, (s+1)·B)``, split rank-strided.
    Yields lists of ``(index, sample seed)`` pairs for :class:`SegmentationTrainSet`.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.total_steps, self.rank, self.world_size = start_step, total_steps, rank, world_size
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def _index(self, position: int) -> int:
        epoch = position // self.num_items
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
        return int(self._perm[position % self.num_items])

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            positions = range(step * self.batch_size, (step + 1) * self.batch_size)[self.rank::self.world_size]
            yield [(self._index(p), sample_seed(self.seed, p)) for p in positions]


# --- optimisation ---------------------------------------------------------------------------------

def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD (Nesterov-free momentum) over ``groups`` with ``config.weight_decay``."""
    if not any(p.requires_grad for g in groups for p in g["params"]):
        raise OodsegError(f"recipe {config.recipe}: no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then poly ``(1-t)^power``, cosine or constant."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
    if config.schedule == "poly":
        return (1.0 - t) ** config.poly_power
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def set_batchnorm_mode(module: nn.Module, bn: str) -> None:
    """Put batch-norm layers in eval mode when ``bn == "frozen"`` (call after ``module.train()``)."""
    if bn == "frozen":
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


# --- evaluation -----------------------------------------------------------------------------------

@torch.no_grad()
def validation_miou(model: nn.Module, dataset, num_classes: int, device: torch.device) -> float:
    """mIoU (:class:`oodseg.metrics.SegmentationMetrics`) of ``model`` on ``dataset`` at full resolution;
    frames sharded over ranks, the confusion matrix summed over all of them."""
    from oodseg.conventions import image_to_tensor
    from oodseg.data.transforms import check_labels
    from oodseg.metrics import SegmentationMetrics

    was_training = model.training
    model.eval()
    metrics = SegmentationMetrics(num_classes)
    for index in track(dist_utils.shard(range(len(dataset))), "validate"):
        sample = dataset[index]
        check_labels(sample.label, num_classes, str(sample.image_path))
        logits = segmentation_logits(model, image_to_tensor(sample.image)[None].to(device))
        metrics.update(logits.argmax(1).cpu().numpy(), sample.label[None])
    model.train(was_training)
    metrics.all_reduce()
    return metrics.compute()["mIoU"]


# --- the loop -------------------------------------------------------------------------------------

STATE_FILE = "trainer_state.pt"
LOG_FILE = "log.jsonl"
SUMMARY_FILE = "train.json"
CHECKPOINT_DIR = "checkpoint"
#: config fields a resumed run may change: where the files are, how long and how fast it runs (a new
#: ``steps``/``epochs`` also stretches the lr schedule from the resumed step on); every other field must
#: equal the interrupted run's (the restored optimizer would silently keep e.g. its old lr)
RESUME_MAY_CHANGE = ("data", "out", "outliers", "steps", "epochs", "time_budget", "device", "log_every", "ckpt_every",
                     "num_workers", "cache_mb", "channels_last", "validate", "resume", "overwrite")


def initial_model(config: TrainConfig) -> tuple[nn.Module, str, dict]:
    """(model, architecture, params): from ``config.init`` (any model source of :mod:`oodseg.models.sources`;
    a non-checkpoint source is recorded as the architecture ``"source"``) or built fresh. Recipes that need the 1×1
    classifier head find it themselves (``entropy-max`` and ``nflowjs`` train any segmentation module)."""
    from oodseg.models import build_model
    from oodseg.models.sources import load_model_source

    if config.init:
        model, meta = load_model_source(config.init)
        if meta["num_classes"] != config.num_classes:
            raise OodsegError(f"init: {config.init} has {meta['num_classes']} classes, the data {config.num_classes}")
        return model, meta["architecture"], dict(meta["params"])
    params = {**config.arch_params, "num_classes": config.num_classes}
    return build_model(config.arch, **params), config.arch, params


def _check_crop_size(train_data, config: TrainConfig) -> None:
    """OodsegError unless some training image holds a ``crop_size``² crop at the largest rescale
    (``scale_range[1]``); otherwise every crop would be partly padding."""
    from oodseg.data.imagefiles import image_size

    height, width = max((image_size(frame.image_path) for frame in train_data.frames), key=min)
    limit = math.floor(min(height, width) * config.scale_range[1])
    if config.crop_size > limit:
        raise OodsegError(f"crop_size: {config.crop_size} px is larger than every training image (largest "
                          f"{height}x{width}, rescaled by at most {config.scale_range[1]:g}); use at most {limit}")


def _prepare_output(out: Path, config: TrainConfig) -> None:
    if config.resume:
        if not (out / STATE_FILE).is_file():
            raise OodsegError(f"resume: {out / STATE_FILE} not found (nothing to resume)")
        remove_stale(out / CHECKPOINT_DIR)  # puts back a checkpoint folder a killed swap left aside
    elif (out / STATE_FILE).exists() or (out / SUMMARY_FILE).exists():
        if not config.overwrite:
            raise OodsegError(f"out: {out} holds a previous run; pass resume=True to continue it or overwrite=True")


def _read_state(path: Path, mmap: bool = False) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise OodsegError(f"{path}: corrupt trainer state ({str(exc).splitlines()[0]})") from exc


def _load_state(path: Path, config: TrainConfig) -> dict:
    """The trainer state at ``path``; OodsegError listing every field of ``config`` (outside
    :data:`RESUME_MAY_CHANGE`) that differs from the interrupted run's."""
    state = _read_state(path)
    saved, now = json.loads(state["config"]), json.loads(json.dumps(dataclasses.asdict(config)))
    changed = [f"{name} was {saved.get(name)!r} in the interrupted run, now {now[name]!r}" for name in now
               if name not in RESUME_MAY_CHANGE and saved.get(name) != now[name]]
    if changed:
        raise OodsegError(f"resume: {'; '.join(changed)} (resume with the saved values, or start over with "
                          "overwrite=True)")
    return state


def resumed_config(out: str, **given) -> TrainConfig:
    """The config of the interrupted run in ``out`` with the fields ``given`` (not None) replaced — dict
    fields (``arch_params``, ``recipe_params``) updated key by key — and ``resume=True``: what
    ``train --resume`` runs, where an option left out means "as in the interrupted run". A given
    field outside :data:`RESUME_MAY_CHANGE` that differs is refused by :func:`train`."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        raise OodsegError(f"resume: {path} not found (nothing to resume)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in json.loads(_read_state(path, mmap=True)["config"]).items() if k in fields}
    for name, value in given.items():
        if value is not None:
            values[name] = {**values[name], **value} if isinstance(value, dict) else value
    if given.get("epochs") is not None and given.get("steps") is None:
        values["steps"] = None  # epochs given alone: they define the length (as in make_config)
    values.update(out=str(out), resume=True)
    return TrainConfig(**values)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by an interrupted run past its last trainer state) and a
    last line cut short by a crash."""
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        lines = [ln for ln in text.splitlines(keepends=True) if ln.endswith("\n") and ln.strip()]
        write_text(path, "".join(ln for ln in lines if json.loads(ln)["step"] <= step))


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path``; when that fails (full disk, interrupt) cut the file back to its old
    length, so it keeps every earlier line and no partial one."""
    size = path.stat().st_size
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(line)
    except BaseException:
        os.truncate(path, size)
        raise


@contextlib.contextmanager
def _writing(path: Path, saved_step: int | None):
    """Turn a failed write of ``path`` (full disk, read-only or missing folder) into one OodsegError line
    that says which resume state is kept (``saved_step``: step of the last trainer state, None if none)."""
    try:
        yield
    except OSError as exc:
        kept = ("no trainer state was written yet" if saved_step is None else
                f"the trainer state of step {saved_step} is kept (resume=True continues from it)")
        raise OodsegError(f"out: cannot write {exc.filename or path} ({exc.strerror or exc}); {kept}") from exc


def _autocast(device: torch.device, amp: str):
    """Autocast context for ``amp`` (bf16 on CUDA for "auto"; a no-op context when off)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def given_model(initial: tuple[nn.Module, str, dict], config: TrainConfig) -> tuple[nn.Module, str, dict]:
    """``initial`` = (any segmentation module, architecture, params that rebuild it) after checking its class
    count against the data's; a module without ``num_classes`` gets the attribute (the checkpoint records it)."""
    from oodseg.adapter import ModelAdapter

    model, architecture, params = initial
    if config.init:
        raise OodsegError(f"init: {config.init} given together with an initial model; give one of them")
    if not isinstance(model, nn.Module):
        raise OodsegError(f"initial model: expected a torch.nn.Module, got {type(model).__name__}")
    with ModelAdapter(model, logits_only=True) as adapter:  # one probe pass: the output's class count
        classes = adapter.num_classes
    if classes != config.num_classes:
        raise OodsegError(f"initial model: {type(model).__name__} outputs {classes} classes, the data has "
                          f"{config.num_classes}")
    if getattr(model, "num_classes", None) is None:
        model.num_classes = classes
    return model, architecture, dict(params)


def _save(out: Path, step: int, recipe: Recipe, module: nn.Module, optimizer, scheduler, scaler,
          config: TrainConfig, checkpoint_meta: dict) -> None:
    """Write the exported checkpoint folder, then the trainer state (rank 0; each replaced atomically, so a
    failed write keeps the previous one whole)."""
    from oodseg.models import save_checkpoint

    model, architecture, params = recipe.export(module)
    with atomic_directory(out / CHECKPOINT_DIR) as folder:
        save_checkpoint(model, folder, architecture, params, recipe=recipe.name, step=step, **checkpoint_meta)
    state = {"step": step, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else {},
             "recipe": recipe.state_dict(), "config": json.dumps(dataclasses.asdict(config))}
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save(state, tmp)


def train(config: TrainConfig, callback: Callable[[int, dict], None] | None = None, *,
          initial: tuple[nn.Module, str, dict] | None = None, checkpoint_meta: dict | None = None) -> dict:
    """Run ``config.recipe`` and return the ``oodseg.train`` summary (also written to ``OUT/train.json``).

    Every input is checked before the first step. ``callback(step, log_record)`` is called after
    each logged step (on every rank). Under ``torchrun`` each rank takes a rank-strided share of
    every global batch; rank 0 writes all files.

    ``initial = (module, architecture, params)`` starts from any segmentation ``nn.Module`` instead
    of ``config.init`` / ``config.arch`` (:func:`given_model`); ``architecture`` and ``params`` must
    rebuild it (``oodseg.models.build_model``) for the checkpoint to reload. ``checkpoint_meta``:
    extra JSON keys written into every checkpoint's ``model.json`` (e.g. the model's source).
    """
    from oodseg.data.transforms import SegmentationTrainSet, TrainAugment

    config.check()
    recipe = get_recipe(config.recipe, **config.recipe_params)
    distributed = dist_utils.init()
    rank, world = dist_utils.rank(), dist_utils.world_size()
    if config.batch_size % world:
        raise OodsegError(f"batch_size: {config.batch_size} is not divisible by the {world} processes")
    device = torch.device(config.device)
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", torch.cuda.current_device())
    out = Path(config.out)
    _prepare_output(out, config)

    data_root, default_pool = resolve_data_root(config.data)
    train_data = open_split(data_root, "train", required=True)
    val_data = open_split(data_root, "val", required=False) if config.validate else None
    if config.outliers is None and default_pool is not None:
        config = dataclasses.replace(config, outliers=str(default_pool))
    torch.manual_seed(config.seed)  # same initial weights on every rank and in every run
    model, architecture, params = initial_model(config) if initial is None else given_model(initial, config)
    checkpoint_meta = dict(checkpoint_meta or {})
    config = dataclasses.replace(config, arch=architecture, arch_params=params)
    _check_crop_size(train_data, config)
    module = recipe.setup(model, config).to(device)
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)
    if config.bn == "sync" and distributed:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    optimizer = build_optimizer(recipe.param_groups(module, config), config)
    total_steps = config.steps or math.ceil(config.epochs * len(train_data) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, config))
    scaler = torch.amp.GradScaler(device.type) if device.type == "cuda" and config.amp == "fp16" else None

    start_step, saved_step = 0, None
    if config.resume:
        state = _load_state(out / STATE_FILE, config)
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        recipe.load_state_dict(state["recipe"])
        start_step = saved_step = int(state["step"])
    if rank == 0:
        with _writing(out / LOG_FILE, saved_step):
            out.mkdir(parents=True, exist_ok=True)
            if config.resume:
                _truncate_log(out / LOG_FILE, start_step)
            else:
                write_text(out / LOG_FILE, "")
    trainable = module
    if distributed:
        trainable = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=recipe.find_unused_parameters)

    augment = TrainAugment(config.crop_size, tuple(config.scale_range), config.hflip, config.color_jitter,
                           config.class_uniform)
    sampler = StepBatchSampler(len(train_data), config.batch_size, config.seed, start_step, total_steps, rank, world)
    train_set = SegmentationTrainSet(train_data, augment, config.num_classes, config.cache_mb)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers)
    params_to_clip = [p for g in optimizer.param_groups for p in g["params"]]
    autocast = _autocast(device, config.amp)
    step, started = start_step, time.perf_counter()
    stopped_early = False
    trainable.train()
    set_batchnorm_mode(trainable, config.bn)
    for data in track(loader, f"train {config.recipe}", total=len(sampler)):
        torch.manual_seed(sample_seed(config.seed, (step + 1) * 1_000_003 + rank))
        data = {key: value.to(device) for key, value in data.items()}
        if config.channels_last:
            data["image"] = data["image"].contiguous(memory_format=torch.channels_last)
        batch = recipe.batch(data, np.random.default_rng([config.seed, step, rank]))
        with autocast:
            loss, terms = recipe.loss(trainable, batch)
        if not torch.isfinite(loss):
            raise OodsegError(f"recipe {config.recipe}: loss is {float(loss)} at step {step} (lower lr?)")
        optimizer.zero_grad(set_to_none=True)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = (nn.utils.clip_grad_norm_(params_to_clip, config.clip) if config.clip
                     else torch.zeros(()))
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        step += 1
        over_budget = config.time_budget is not None and time.perf_counter() - started > config.time_budget
        if distributed:  # every rank must stop at the same step
            over_budget = bool(dist_utils.all_reduce_sum(torch.tensor([float(over_budget)], device=device)) > 0)
        last = step == total_steps or over_budget
        if step % config.log_every == 0 or last:
            record = _log_record(step, len(train_data), config.batch_size, lr, loss, terms, grad_norm, device)
            record["seconds"] = round(time.perf_counter() - started, 3)
            if rank == 0:
                with _writing(out / LOG_FILE, saved_step):
                    _append_line(out / LOG_FILE, json.dumps(record) + "\n")
            if callback is not None:
                callback(step, record)
        if step % config.ckpt_every == 0 or last:
            if rank == 0:
                with _writing(out, saved_step):
                    _save(out, step, recipe, unwrap(trainable), optimizer, scheduler, scaler, config, checkpoint_meta)
                saved_step = step
            dist_utils.barrier()
        if over_budget:
            stopped_early = step < total_steps
            break
    seconds = time.perf_counter() - started
    if start_step >= total_steps and rank == 0:  # resumed a finished run: nothing left to train
        with _writing(out, saved_step):
            _save(out, step, recipe, unwrap(trainable), optimizer, scheduler, scaler, config, checkpoint_meta)
    model, _, _ = recipe.export(unwrap(trainable))
    val_miou = None
    if val_data is not None and len(val_data):
        val_miou = validation_miou(model, val_data, config.num_classes, device)
    summary = {"schema": "oodseg.train", "version": 1, "recipe": config.recipe, "steps": step,
               "total_steps": total_steps, "stopped_early": stopped_early, "seconds": round(seconds, 3),
               "val_mIoU": val_miou, "checkpoint": str((out / CHECKPOINT_DIR).resolve()), "architecture": config.arch,
               "world_size": world}
    if rank == 0:
        with _writing(out / SUMMARY_FILE, saved_step):
            write_json(out / SUMMARY_FILE, summary)
    dist_utils.barrier()
    return summary


def _log_record(step: int, num_items: int, batch_size: int, lr: float, loss: torch.Tensor, terms: dict,
                grad_norm: torch.Tensor, device: torch.device) -> dict:
    """One ``log.jsonl`` object; loss terms averaged over ranks."""
    names = sorted(terms)
    values = torch.tensor([float(loss.detach()), float(grad_norm)] + [float(terms[n]) for n in names],
                          dtype=torch.float64, device=device)
    values = (dist_utils.all_reduce_sum(values) / dist_utils.world_size()).tolist()
    record = {"step": step, "epoch": (step * batch_size) // num_items, "lr": lr, "loss": values[0]}
    record.update({name: value for name, value in zip(names, values[2:])})
    record["grad_norm"] = values[1]
    return record
