"""The sub-center ArcFace training loop: one process, or one rank of a torchrun job.

Determinism: the sample order, the flips and the global RNG of epoch ``e`` derive from ``(seed, e)``, and
mid-epoch checkpoints (Ctrl-C, SIGTERM) carry the RNG states, so ``--resume`` reproduces an uninterrupted run
bit-for-bit on the CPU.

Under torchrun every rank draws the same epoch order; a step's global batch is ``batch_size × world``
samples and rank ``r`` takes its ``r``-th share. The backbone runs in DDP; the head is sharded by class
(:class:`ShardedSubCenterArcFace`), as it is in one process with ``sample_rate < 1``. Checkpoints always
hold the whole head in class order (plus the shard layout), so a run saved on N ranks resumes on M.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecleaner.config import TrainConfig
from facecleaner.distributed import Dist, shard_ranges
from facecleaner.errors import CheckpointError, Interrupted
from facecleaner.fileio import atomic_output
from facecleaner.model import prepare_images
from facecleaner.model.backbones import build_backbone, load_backbone_weights
from facecleaner.model.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    ModelSpec,
    atomic_save,
    load_payload,
    model_payload,
    restore,
    save_model,
)
from facecleaner.model.runtime import autocast, place_backbone
from facecleaner.model.sharded_head import ShardedSubCenterArcFace, gather_rows
from facecleaner.progress import logger, progress_bar
from facecleaner.sources.base import Source, too_many_unreadable
from facecleaner.sources.dataset import BatchPlan, DecodedImages, batch_loader, index_batches
from facecleaner.training.augment import augment
from facecleaner.training.schedule import lr_factor, margin_at

METRICS_FILE = "metrics.jsonl"
POSTFIX_EVERY = 20  # steps between progress-bar loss readings


@dataclass
class TrainResult:
    run_dir: str
    epochs: int
    steps: int
    classes: int
    samples: int
    unreadable: int
    final_loss: float
    final_accuracy: float
    final_mean_angle: float
    images_per_second: float


def train_model(source: Source, class_index: np.ndarray, spec: ModelSpec, config: TrainConfig, run_dir: Path,
                resume: bool = False, progress: bool = True, world: Dist | None = None) -> TrainResult:
    """Train ``spec`` on ``source`` (labels already encoded) and write ``RUN_DIR/model.pt``."""
    world = world or Dist()
    sample_rate = config.sample_rate
    sharded = world.enabled or sample_rate < 1.0
    device = world.device(torch.device(config.device))
    torch.manual_seed(config.seed)  # the initial weights too are a function of --seed
    if sharded:
        backbone = build_backbone(spec.backbone, embedding_size=spec.embedding_size, image_size=spec.image_size,
                                  dropout=spec.dropout)
        head: torch.nn.Module = ShardedSubCenterArcFace(
            len(spec.classes), spec.subcenters, spec.embedding_size, spec.scale, spec.margin, world.rank,
            world.world, sample_rate, config.seed)
    else:
        backbone, head = spec.build()
    if config.init_backbone:
        load_backbone_weights(backbone, Path(config.init_backbone))
    channels_last = place_backbone(backbone, device)
    head.to(device)

    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=device.type == "cuda" or None)
    model = backbone
    if world.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            backbone, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if config.compile else model
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    samples = len(class_index)
    labels = torch.from_numpy(class_index.astype(np.int64))
    global_batch = config.batch_size * world.world
    steps_per_epoch = len(index_batches(np.arange(samples), global_batch, drop_last=True))
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    margin_warmup = int(config.margin_warmup_epochs * steps_per_epoch)

    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "unreadable": [], "metrics": []}
    augment_rng = torch.Generator()
    if resume:
        state = _load_checkpoint(run_dir / CHECKPOINT_FILE, backbone, head, optimizer, scaler, augment_rng,
                                 world, global_batch)
        if world.is_main:
            _write_metrics(run_dir, state["metrics"])
        if state["epoch"] < config.epochs:
            logger.info("resumed at epoch %d/%d, step %d/%d", state["epoch"] + 1, config.epochs,
                        state["step_in_epoch"] + 1, steps_per_epoch)
        else:
            logger.info("resumed a run that has finished its %d epochs: writing its model", config.epochs)
    unreadable = set(state["unreadable"])
    history: list[dict[str, Any]] = state["metrics"]  # one entry per finished epoch, saved in every checkpoint
    reasons: dict[int, str] = {}  # why this process could not read a sample, for the abort message
    max_bad = config.max_bad_fraction * samples

    plan = BatchPlan()
    cache = config.workers == 0 and DecodedImages.fits_memory_cache(samples, spec.image_size, world.world)
    if cache and world.is_main:
        logger.info("decoding each image once and keeping it in memory (%.0f MiB per process)",
                    DecodedImages.memory_cache_bytes(samples, spec.image_size) / 2 ** 20)
    loader = batch_loader(DecodedImages(source, spec.image_size, cache=cache), plan, config.workers,
                          device.type == "cuda")
    images_seen, seconds = 0, 0.0
    # Installed before the loader's first pass, so its worker processes (forked then) inherit it: a terminal's
    # Ctrl-C reaches them too, and they must keep serving batches until the checkpoint is written.
    with _StopFlag() as stop:
        for epoch in range(state["epoch"], config.epochs):
            epoch_seed = config.seed * 1_000_003 + epoch
            order = torch.randperm(samples, generator=torch.Generator().manual_seed(epoch_seed)).numpy()
            batches = index_batches(order, global_batch, drop_last=True)
            if world.enabled:  # this rank's share of each global batch
                batches = [np.array_split(batch, world.world)[world.rank].tolist() for batch in batches]
            first = state["step_in_epoch"] if epoch == state["epoch"] else 0
            if first == 0:
                rank_seed = epoch_seed + 7_919 * world.rank  # rank 0 (and one process) as before
                torch.manual_seed(rank_seed)
                augment_rng.manual_seed(rank_seed + 1)
            sums = _EpochSums()
            started = time.perf_counter()
            plan.batches = batches[first:]
            bar = progress_bar(len(batches) * global_batch, f"epoch {epoch + 1}/{config.epochs}",
                               progress and world.is_main, initial=first * global_batch)
            for step_in_epoch, (images, ok, indices, why, _) in enumerate(loader, start=first):
                global_step = epoch * steps_per_epoch + step_in_epoch
                reasons.update((int(i), reason) for i, reason, good in zip(indices, why, ok, strict=True) if not good)
                too_few = _sync_unreadable(world, unreadable, indices[~ok].tolist(), int(ok.sum()) < 2, device)
                if len(unreadable) > max_bad:
                    raise too_many_unreadable(source, sorted(unreadable), reasons.get, config.max_bad_fraction)
                if too_few:
                    continue
                x = augment(prepare_images(images[ok], device, channels_last), augment_rng, config.shift)
                y = labels[indices[ok]].to(device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(global_step, warmup_steps, total_steps)
                margin = margin_at(global_step, margin_warmup, spec.margin)
                with autocast(device, config.precision):
                    embeddings = forward(x)
                    out = head(embeddings, y, margin=margin, step=global_step) if sharded else \
                        head(embeddings, y, margin=margin)
                optimizer.zero_grad(set_to_none=True)
                # DDP averages the backbone's gradients over ranks, but the global loss is the *sum* of
                # the partial losses: scale by the world for the backbone, and undo it for the own shard.
                scaler.scale(out.loss * world.world if world.enabled else out.loss).backward()
                if world.enabled and head.weight.grad is not None:
                    head.weight.grad.div_(world.world)
                if world.enabled and scaler.is_enabled():
                    _share_overflow(list(head.parameters()), world)
                scaler.unscale_(optimizer)
                if world.enabled:
                    _clip_global(list(backbone.parameters()), list(head.parameters()), config.grad_clip, world)
                else:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                sums.add(out, len(out.correct))
                bar.update(len(images) * world.world)
                if not bar.disable and step_in_epoch % POSTFIX_EVERY == 0:  # .item() waits for the GPU
                    bar.set_postfix(loss=f"{_reported_loss(out).item():.3f}", refresh=False)
                if _any_rank(world, stop.requested, device):
                    _save_checkpoint(run_dir, spec, backbone, head, optimizer, scaler, augment_rng,
                                     epoch, step_in_epoch + 1, unreadable, history, world, global_batch)
                    raise Interrupted(f"stopped by {stop.cause} in epoch {epoch + 1}/{config.epochs} after step "
                                      f"{step_in_epoch + 1}/{steps_per_epoch}; checkpoint written to {run_dir}",
                                      "run the same command with --resume to continue")
            bar.close()
            elapsed = time.perf_counter() - started
            images_seen += sums.count
            seconds += elapsed
            last_step = (epoch + 1) * steps_per_epoch - 1
            metrics = sums.summary(epoch + 1, elapsed, optimizer.param_groups[0]["lr"],
                                   margin_at(last_step, margin_warmup, spec.margin), len(unreadable))
            logger.info("epoch %d/%d loss %.4f accuracy %.3f mean angle %.1f° %.0f img/s",
                        epoch + 1, config.epochs, metrics["loss"], metrics["accuracy"],
                        metrics["mean_angle"], metrics["images_per_second"])
            history.append(metrics)
            _save_checkpoint(run_dir, spec, backbone, head, optimizer, scaler, augment_rng,
                             epoch + 1, 0, unreadable, history, world, global_batch)
            if world.is_main:  # after the checkpoint: a crash between the two loses no line and repeats none
                _write_metrics(run_dir, history)
    backbone.to(memory_format=torch.contiguous_format)
    if sharded:
        full_head = gather_rows(head.weight.detach(), _shard_rows(head, world), world.world)
        if world.is_main:
            atomic_save(model_payload(spec, backbone.cpu(), full_head.cpu()), run_dir / MODEL_FILE)
        world.barrier()
    else:
        save_model(run_dir / MODEL_FILE, spec, backbone.cpu(), head.cpu())
    return _result(run_dir, config, total_steps, len(spec.classes), samples, len(unreadable), history,
                   images_seen / seconds if seconds else 0.0)


class _EpochSums:
    """Running sums of loss, accuracy and angle over an epoch's samples, kept on the device: reading them
    every step would make the CPU wait for the GPU each step."""

    def __init__(self) -> None:
        self.count = 0
        self.loss: Any = 0.0
        self.correct: Any = 0
        self.angle: Any = 0.0

    def add(self, out: Any, n: int) -> None:
        self.count += n
        self.loss = self.loss + _reported_loss(out).detach().float() * n
        self.correct = self.correct + out.correct.sum()
        self.angle = self.angle + torch.rad2deg(torch.arccos(out.target_cosine.float().clamp(-1, 1))).sum()

    def summary(self, epoch: int, seconds: float, lr: float, margin: float, unreadable: int) -> dict[str, Any]:
        n = max(self.count, 1)
        loss, correct, angle = (float(v) for v in (self.loss, self.correct, self.angle))
        return {"epoch": epoch, "loss": loss / n, "accuracy": correct / n, "mean_angle": angle / n,
                "lr": lr, "margin": margin, "images": self.count, "seconds": round(seconds, 3),
                "images_per_second": self.count / seconds if seconds else 0.0, "unreadable": unreadable}


def _result(run_dir: Path, config: TrainConfig, steps: int, classes: int, samples: int, unreadable: int,
            history: list[dict[str, Any]], speed: float) -> TrainResult:
    metrics = history[-1] if history else {"loss": math.nan, "accuracy": 0.0, "mean_angle": 180.0}
    return TrainResult(str(run_dir), config.epochs, steps, classes, samples, unreadable, metrics["loss"],
                       metrics["accuracy"], metrics["mean_angle"], speed)


def _save_checkpoint(run_dir: Path, spec: ModelSpec, backbone: torch.nn.Module, head: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, augment_rng: torch.Generator,
                     epoch: int, step_in_epoch: int, unreadable: set[int], history: list[dict[str, Any]],
                     world: Dist | None = None, global_batch: int | None = None) -> None:
    """Write checkpoint.pt; a sharded head (and its momentum) is gathered whole, in class order, on rank 0.

    ``history`` (the finished epochs' metrics) travels in the checkpoint, so metrics.jsonl can always be
    rewritten to match it."""
    world = world or Dist()
    optimizer_state = optimizer.state_dict()
    rng = (torch.get_rng_state(), augment_rng.get_state())
    if isinstance(head, ShardedSubCenterArcFace):
        rows = _shard_rows(head, world)
        full_head = gather_rows(head.weight.detach(), rows, world.world)
        head_index = len(optimizer_state["param_groups"][0]["params"]) - 1
        head_state = dict(optimizer_state["state"].get(head_index, {}))
        if "momentum_buffer" in head_state:
            head_state["momentum_buffer"] = gather_rows(head_state["momentum_buffer"], rows, world.world)
        rngs = world.gather_objects(rng)
        if not world.is_main:
            world.barrier()
            return
        optimizer_state = {"state": {**optimizer_state["state"], head_index: head_state},
                           "param_groups": optimizer_state["param_groups"]}
        payload = model_payload(spec, backbone, full_head)
        payload["shards"] = {"world": world.world, "ranges": [list(r) for r in shard_ranges(head.num_classes,
                                                                                              world.world)],
                             "sample_rate": head.sample_rate,
                             "rank_rng": [{"torch_rng": t, "augment_rng": a} for t, a in rngs]}
    else:
        payload = model_payload(spec, backbone, head.weight)
    payload.update(optimizer=optimizer_state, scaler=scaler.state_dict(), epoch=epoch,
                   step_in_epoch=step_in_epoch, unreadable=sorted(unreadable), metrics=history,
                   torch_rng=rng[0], augment_rng=rng[1])
    if global_batch is not None:
        payload["global_batch"] = global_batch
    atomic_save(payload, run_dir / CHECKPOINT_FILE)
    world.barrier()


def _load_checkpoint(path: Path, backbone: torch.nn.Module, head: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     augment_rng: torch.Generator, world: Dist | None = None,
                     global_batch: int | None = None) -> dict[str, Any]:
    """Load a checkpoint saved on any number of ranks; a sharded head takes its own rows of the whole head."""
    world = world or Dist()
    payload = load_payload(path)
    if "optimizer" not in payload:
        raise CheckpointError(f"{path} is a final model, not a training checkpoint", "start a new run")
    optimizer_state = payload["optimizer"]
    if isinstance(head, ShardedSubCenterArcFace):
        try:
            backbone.load_state_dict(payload["backbone"])
            head.load_full(payload["head"]["weight"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} does not match this run: {str(exc).splitlines()[0]}",
                                  "resume with the settings the run was started with") from exc
        head_index = len(optimizer.param_groups[0]["params"]) - 1
        head_state = dict(optimizer_state["state"].get(head_index, {}))
        if "momentum_buffer" in head_state:
            head_state["momentum_buffer"] = head.shard_rows(head_state["momentum_buffer"])
        optimizer_state = {"state": {**optimizer_state["state"], head_index: head_state},
                           "param_groups": optimizer_state["param_groups"]}
    else:
        _, saved_backbone, saved_head = restore(payload, path)
        backbone.load_state_dict(saved_backbone.state_dict())
        head.load_state_dict(saved_head.state_dict())
    optimizer.load_state_dict(optimizer_state)
    scaler.load_state_dict(payload["scaler"])
    saved = payload.get("shards", {})
    rank_rng = saved.get("rank_rng") if saved.get("world", 1) == world.world else None
    rng = rank_rng[world.rank] if rank_rng else {"torch_rng": payload["torch_rng"],
                                                  "augment_rng": payload["augment_rng"]}
    torch.set_rng_state(rng["torch_rng"])
    augment_rng.set_state(rng["augment_rng"])
    step_in_epoch = payload["step_in_epoch"]
    saved_batch = payload.get("global_batch", global_batch)
    if global_batch is not None and saved_batch and saved_batch != global_batch:
        step_in_epoch = step_in_epoch * saved_batch // global_batch  # resumed on another number of ranks
    history = payload.get("metrics")
    if history is None:  # a checkpoint from before the history moved in: keep the file's finished epochs
        history = [line for line in _read_metrics(path.parent) if line["epoch"] <= payload["epoch"]]
    return {"epoch": payload["epoch"], "step_in_epoch": step_in_epoch, "unreadable": payload["unreadable"],
            "metrics": history}


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's lines, the last one for each epoch (an older run may have repeated an epoch)."""
    path = run_dir / METRICS_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return sorted({line["epoch"]: line for line in lines}.values(), key=lambda line: line["epoch"])


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with one line per finished epoch, in order (atomically)."""
    with atomic_output(run_dir / METRICS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(metrics) + "\n" for metrics in history))


def _shard_rows(head: ShardedSubCenterArcFace, world: Dist) -> list[int]:
    return [(end - start) * head.subcenters for start, end in shard_ranges(head.num_classes, world.world)]


def _reported_loss(out: Any) -> torch.Tensor:
    """The loss of the whole (global) batch: a sharded head's ``loss`` is only this rank's part."""
    return getattr(out, "global_loss", out.loss)


def _sync_unreadable(world: Dist, unreadable: set[int], new: list[int], too_few: bool,
                     device: torch.device) -> bool:
    """Add every rank's newly unreadable samples to ``unreadable``; True when any rank lacks two images."""
    if not world.enabled:
        unreadable.update(new)
        return too_few
    flags = world.all_reduce(torch.tensor([len(new), int(too_few)], dtype=torch.int64, device=device))
    if int(flags[0]):
        for part in world.all_gather_objects(new):
            unreadable.update(part)
    return bool(flags[1])


def _any_rank(world: Dist, flag: bool, device: torch.device) -> bool:
    if not world.enabled:
        return flag
    return bool(world.all_reduce(torch.tensor([int(flag)], device=device), torch.distributed.ReduceOp.MAX))


def _share_overflow(head_params: list[torch.Tensor], world: Dist) -> None:
    """fp16 under torchrun: each GradScaler looks only at its own rank's gradients, and a head shard's are not
    all-reduced. When any rank's shard overflowed, poison one local gradient with NaN so that every rank's
    scaler skips this step and lowers its scale alike; otherwise their scales, then the weights, drift apart.
    (Backbone gradients are identical on every rank after DDP's all-reduce, so an overflow there is shared.)"""
    grads = [p.grad for p in head_params if p.grad is not None]
    if not grads:
        return
    local = torch.stack([(~torch.isfinite(g)).any() for g in grads]).any().float().reshape(1)
    overflow = world.all_reduce(local, op=torch.distributed.ReduceOp.MAX)[0]
    grads[0].view(-1)[:1].add_(torch.where(overflow > 0, float("nan"), 0.0).to(grads[0].dtype))


def _clip_global(backbone_params: list[torch.Tensor], head_params: list[torch.Tensor], max_norm: float,
                 world: Dist) -> None:
    """clip_grad_norm_ over the whole model: the replicated backbone once plus every rank's shard."""
    def squares(params: list[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad.detach().float().norm() ** 2 for p in params if p.grad is not None]
        return torch.stack(grads).sum() if grads else torch.zeros(())

    device = next(iter(backbone_params)).device
    head_squares = world.all_reduce(squares(head_params).to(device).reshape(1))[0]
    total = (squares(backbone_params).to(device) + head_squares).sqrt()
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in backbone_params + head_params:
        if p.grad is not None:
            p.grad.mul_(coefficient.to(p.grad.dtype))


class _StopFlag:
    """Context manager turning Ctrl-C (SIGINT) and SIGTERM into a flag checked between steps, so that either
    ends training with a checkpoint (signals reach the main thread only)."""

    SIGNALS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.requested = False
        self.cause = "a signal to another process"  # under torchrun, the rank that got it says which
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.cause = self.SIGNALS[signum]
