"""The sub-center ArcFace training loop: one process, or one rank of a torchrun job.

Determinism: the sample order, the flips and the global RNG of epoch ``e`` derive from ``(seed, e)``, and
mid-epoch checkpoints (Ctrl-C, SIGTERM) carry the RNG states, so ``--resume`` reproduces an uninterrupted run
bit-for-bit on the CPU.

Under torchrun every rank draws the same epoch order; a step's global batch is ``batch_size × world``
samples and rank ``r`` takes its ``r``-th share. The backbone runs in DDP; the head is sharded by class
(:class:`ShardedSubCenterArcFace`), as it is in one process with ``sample_rate < 1``.

A sharded head is checkpointed by every rank into its own file (its class range's weight and momentum rows);
``checkpoint.pt``, written last by rank 0, names them and holds the rest, so a crash mid-save leaves the
previous checkpoint whole. A resume on any number of ranks reads, memory-mapped, only the rows each rank
owns (a run saved on N ranks resumes on M), and the final ``model.pt`` is assembled on disk from every
rank's rows: no rank ever holds more of the head than its own shard. Under torchrun a step waits for the
other ranks once on the host: one exchange carries each rank's row count and its unreadable, too-few and
stop flags.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecleaner.config import TrainConfig
from facecleaner.distributed import Dist, shard_ranges
from facecleaner.errors import CheckpointError, Interrupted
from facecleaner.fileio import atomic_output, fault_point, fsync_path, temporary_beside
from facecleaner.model import prepare_images
from facecleaner.model.backbones import build_backbone, load_backbone_weights
from facecleaner.model.checkpoint import (
    CHECKPOINT_FILE,
    HEAD_SHARD_FORMAT,
    MODEL_FILE,
    ModelSpec,
    atomic_save,
    head_shard_name,
    load_payload,
    model_payload,
    read_rows,
    save_durably,
    save_model,
    save_model_from_rows,
    stale_head_shards,
    write_rows,
)
from facecleaner.model.runtime import autocast, place_backbone
from facecleaner.model.sharded_head import ShardedSubCenterArcFace
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
                flags = _StepFlags.exchange(world, int(ok.sum()), indices[~ok].tolist(), stop.requested, device)
                if flags.stop:  # a rank was signalled during the last step: checkpoint the steps done
                    _save_checkpoint(run_dir, spec, backbone, head, optimizer, scaler, augment_rng,
                                     epoch, step_in_epoch, unreadable, history, world, global_batch)
                    raise _stopped(stop, run_dir, epoch, step_in_epoch, config.epochs, steps_per_epoch)
                flags.add_unreadable(unreadable)
                if len(unreadable) > max_bad:
                    raise too_many_unreadable(source, sorted(unreadable), reasons.get, config.max_bad_fraction)
                if flags.too_few:
                    continue
                x = augment(prepare_images(images[ok], device, channels_last), augment_rng, config.shift)
                y = labels[indices[ok]].to(device, non_blocking=True)
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(global_step, warmup_steps, total_steps)
                margin = margin_at(global_step, margin_warmup, spec.margin)
                with autocast(device, config.precision):
                    embeddings = forward(x)
                    out = head(embeddings, y, margin=margin, step=global_step, sizes=flags.rows) if sharded \
                        else head(embeddings, y, margin=margin)
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
            if _StepFlags.exchange(world, 0, [], stop.requested, device).stop:  # signalled in the last step
                raise _stopped(stop, run_dir, epoch, steps_per_epoch, config.epochs, steps_per_epoch)
    backbone.to(memory_format=torch.contiguous_format)
    if sharded:
        _save_sharded_model(run_dir, spec, backbone.cpu(), head, world)
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
    """Write checkpoint.pt; a sharded head (and its momentum) goes to one file per rank, which it names.

    Every rank writes its shard file under a name unique to this save; rank 0 then publishes checkpoint.pt,
    the one file a resume starts from, and removes the shard files no longer named. ``history`` (the finished
    epochs' metrics) travels in the checkpoint, so metrics.jsonl can always be rewritten to match it."""
    world = world or Dist()
    optimizer_state = optimizer.state_dict()
    rng = {"torch_rng": torch.get_rng_state(), "augment_rng": augment_rng.get_state()}
    if isinstance(head, ShardedSubCenterArcFace):
        head_state = optimizer_state["state"].pop(_head_index(optimizer_state), {})
        save_id = world.broadcast_object(f"{epoch}-{step_in_epoch}-{secrets.token_hex(4)}")
        names = [head_shard_name(save_id, rank, world.world) for rank in range(world.world)]
        shard = {"format": HEAD_SHARD_FORMAT, "classes": [head.start, head.end], "subcenters": head.subcenters,
                 "weight": head.weight.detach(), **rng}
        if "momentum_buffer" in head_state:
            shard["momentum_buffer"] = head_state["momentum_buffer"]
        save_durably(shard, run_dir / names[world.rank])
        world.barrier()
        fault_point("head shards written")
        if not world.is_main:
            world.barrier()
            return
        payload = model_payload(spec, backbone, None)
        payload["shards"] = {"world": world.world, "files": names, "sample_rate": head.sample_rate,
                             "ranges": [list(r) for r in shard_ranges(head.num_classes, world.world)],
                             "momentum": "momentum_buffer" in head_state}
        fsync_path(run_dir)  # the shard files' names are on disk before checkpoint.pt names them
    else:
        payload = model_payload(spec, backbone, head.weight)
    payload.update(optimizer=optimizer_state, scaler=scaler.state_dict(), epoch=epoch,
                   step_in_epoch=step_in_epoch, unreadable=sorted(unreadable), metrics=history, **rng)
    if global_batch is not None:
        payload["global_batch"] = global_batch
    atomic_save(payload, run_dir / CHECKPOINT_FILE)
    if "shards" in payload:
        for stale in stale_head_shards(run_dir, payload["shards"]["files"]):
            stale.unlink(missing_ok=True)
    world.barrier()


def _load_checkpoint(path: Path, backbone: torch.nn.Module, head: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     augment_rng: torch.Generator, world: Dist | None = None,
                     global_batch: int | None = None) -> dict[str, Any]:
    """Load a checkpoint saved on any number of ranks, into a whole or a sharded head: the head reads only
    its own rows, from the shard files, or from checkpoint.pt itself when it holds the whole head (a
    one-process run's, or one saved before shard files)."""
    world = world or Dist()
    payload = load_payload(path)
    if "optimizer" not in payload:
        raise CheckpointError(f"{path} is a final model, not a training checkpoint", "start a new run")
    try:
        backbone.load_state_dict(payload["backbone"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not match this run: {str(exc).splitlines()[0]}",
                              "resume with the settings the run was started with") from exc
    optimizer_state = payload["optimizer"]
    state = dict(optimizer_state["state"])
    head_state = state.pop(_head_index(optimizer_state), {})
    saved = payload.get("shards", {})
    momentum = _load_head_rows(path, payload, head, saved.get("momentum", "momentum_buffer" in head_state))
    optimizer.load_state_dict({"state": _in_memory(state), "param_groups": optimizer_state["param_groups"]})
    if momentum is not None:
        optimizer.state[head.weight]["momentum_buffer"] = momentum
    scaler.load_state_dict(payload["scaler"])
    rng = {"torch_rng": payload["torch_rng"], "augment_rng": payload["augment_rng"]}  # rank 0's
    if saved.get("world") == world.world:  # the same ranks: each continues its own RNG streams
        rng = saved["rank_rng"][world.rank] if "rank_rng" in saved else \
            load_payload(path.parent / saved["files"][world.rank], HEAD_SHARD_FORMAT)
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


def _head_index(optimizer_state: dict[str, Any]) -> int:
    """The head's weight is the optimizer's last parameter (see train_model)."""
    return len(optimizer_state["param_groups"][0]["params"]) - 1


@dataclass(frozen=True)
class _HeadPart:
    """A saved file holding the head's classes ``[start, end)``, and where its weight and momentum are in it."""

    file: Path
    start: int
    end: int
    file_format: str
    weight: Callable[[dict[str, Any]], torch.Tensor]
    momentum: Callable[[dict[str, Any]], torch.Tensor]


def _head_parts(path: Path, payload: dict[str, Any], subcenters: int) -> list[_HeadPart]:
    """Shard files, as checkpoint.pt names them, or checkpoint.pt itself when it holds the whole head."""
    saved = payload.get("shards", {})
    if "files" in saved:
        missing = [name for name in saved["files"] if not (path.parent / name).is_file()]
        if missing:
            raise CheckpointError(f"{path} names head shard files that are not beside it: {', '.join(missing)}",
                                  "copy the run directory with all its files, or start the run again")
        return [_HeadPart(path.parent / name, start, end, HEAD_SHARD_FORMAT, lambda p: p["weight"],
                          lambda p: p["momentum_buffer"])
                for name, (start, end) in zip(saved["files"], saved["ranges"], strict=True)]
    if "head" not in payload:
        raise CheckpointError(f"{path} holds no head", "the checkpoint is damaged: start the run again")
    head_index = _head_index(payload["optimizer"])
    return [_HeadPart(path, 0, len(payload["head"]["weight"]) // subcenters, payload["format"],
                      lambda p: p["head"]["weight"], lambda p: p["optimizer"]["state"][head_index]["momentum_buffer"])]


def _load_head_rows(path: Path, payload: dict[str, Any], head: torch.nn.Module,
                    with_momentum: bool) -> torch.Tensor | None:
    """Copy this process's rows of the saved head (its shard's, or all) into ``head.weight`` and return the
    same rows of the momentum (None when the checkpoint has none): only those rows are read, a block at a time,
    from whichever files hold them."""
    start, end = (head.start, head.end) if isinstance(head, ShardedSubCenterArcFace) else (0, head.num_classes)
    k = head.subcenters
    parts = _head_parts(path, payload, k)
    if parts[-1].end != head.num_classes:
        raise CheckpointError(f"{path} holds a head of {parts[-1].end} classes, this run has {head.num_classes}",
                              "resume with the data and settings the run was started with")
    momentum = torch.empty_like(head.weight, requires_grad=False) if with_momentum else None
    for part in parts:
        first, last = max(part.start, start), min(part.end, end)
        if first >= last:
            continue
        rows, offset = slice((first - start) * k, (last - start) * k), (first - part.start) * k
        try:
            with torch.no_grad():
                read_rows(part.file, part.weight, offset, head.weight[rows], part.file_format)
                if momentum is not None:
                    read_rows(part.file, part.momentum, offset, momentum[rows], part.file_format)
        except KeyError as exc:
            raise CheckpointError(f"{part.file} lacks the head's {exc}", "the checkpoint is damaged: resume from "
                                  "another copy of the run, or start it again") from exc
    return momentum


def _in_memory(value: Any) -> Any:
    """``value`` with every tensor copied out of the memory-mapped file it was loaded from: the optimizer
    updates its buffers in place, and a mapping must not outlive the load."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: _in_memory(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_in_memory(item) for item in value)
    return value


def _save_sharded_model(run_dir: Path, spec: ModelSpec, backbone: torch.nn.Module,
                        head: ShardedSubCenterArcFace, world: Dist) -> None:
    """model.pt in the one-file format, its head assembled in a raw file beside it: each rank writes its own
    rows there, then rank 0 saves model.pt with that file memory-mapped as the head (file-backed pages)."""
    target = run_dir / MODEL_FILE
    rows_file = Path(world.broadcast_object(str(temporary_beside(target)) if world.is_main else None))
    shape = (head.num_classes * head.subcenters, head.embedding_size)
    if world.is_main:
        os.truncate(rows_file, shape[0] * shape[1] * head.weight.element_size())
    world.barrier()
    try:
        write_rows(rows_file, head.start * head.subcenters, head.weight)
        world.barrier()
        if world.is_main:
            save_model_from_rows(target, spec, backbone, rows_file, shape, head.weight.dtype)
    finally:
        if world.is_main:
            rows_file.unlink(missing_ok=True)
    world.barrier()


def _read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's lines, the last one for each epoch (an older run may have repeated an epoch)."""
    path = run_dir / METRICS_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return sorted({line["epoch"]: line for line in lines}.values(), key=lambda line: line["epoch"])


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with one line per finished epoch, in order (atomically)."""
    with atomic_output(run_dir / METRICS_FILE) as tmp:
        tmp.write_text("".join(json.dumps(metrics) + "\n" for metrics in history))


def _reported_loss(out: Any) -> torch.Tensor:
    """The loss of the whole (global) batch: a sharded head's ``loss`` is only this rank's part."""
    return getattr(out, "global_loss", out.loss)


@dataclass(frozen=True)
class _StepFlags:
    """What the ranks tell each other before a step, in one exchange (one wait for the device per step):
    each rank's readable row count (the sharded head's batch sizes), newly unreadable sample count, whether it
    holds too few images to train on and whether it was signalled to stop."""

    rows: list[int] | None  # every rank's readable rows; None in one process
    new: list[list[int]]  # every rank's newly unreadable samples, exchanged only when there are some
    too_few: bool
    stop: bool

    @staticmethod
    def exchange(world: Dist, rows: int, new: list[int], stop: bool, device: torch.device) -> _StepFlags:
        if not world.enabled:
            return _StepFlags(None, [new], rows < 2, stop)
        mine = torch.tensor([rows, len(new), int(stop)], dtype=torch.int64, device=device)
        parts = [torch.empty_like(mine) for _ in range(world.world)]
        torch.distributed.all_gather(parts, mine)
        table = torch.stack(parts).tolist()
        counts = [row[0] for row in table]
        new_parts = world.all_gather_objects(new) if any(row[1] for row in table) else []
        return _StepFlags(counts, new_parts, min(counts) < 2, any(row[2] for row in table))

    def add_unreadable(self, unreadable: set[int]) -> None:
        for part in self.new:
            unreadable.update(part)


def _stopped(stop: _StopFlag, run_dir: Path, epoch: int, steps_done: int, epochs: int,
             steps_per_epoch: int) -> Interrupted:
    return Interrupted(f"stopped by {stop.cause} in epoch {epoch + 1}/{epochs} after step "
                       f"{steps_done}/{steps_per_epoch}; checkpoint written to {run_dir}",
                       "run the same command with --resume to continue")


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
