"""One process, one device: the sub-center ArcFace training loop.

Determinism: the sample order, the flips and the global RNG of epoch ``e`` derive from ``(seed, e)``, and
mid-epoch checkpoints (SIGTERM) carry the RNG states, so ``--resume`` reproduces an uninterrupted run
bit-for-bit on the CPU.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facecleaner.config import TrainConfig
from facecleaner.errors import CheckpointError, FaceCleanerError, TooManyBadSamples
from facecleaner.model import prepare_images
from facecleaner.model.backbones import load_backbone_weights
from facecleaner.model.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    ModelSpec,
    atomic_save,
    load_payload,
    model_payload,
    restore,
)
from facecleaner.model.runtime import autocast
from facecleaner.progress import logger, progress_bar
from facecleaner.sources.base import Source
from facecleaner.sources.dataset import DecodedImages, batch_loader, index_batches
from facecleaner.training.augment import augment
from facecleaner.training.schedule import lr_factor, margin_at

METRICS_FILE = "metrics.jsonl"
# Below these the model has not separated the classes: scoring with it would drop nearly everything.
MIN_SEPARATED_ACCURACY = 0.3
MAX_SEPARATED_ANGLE = 70.0


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
    separated: bool
    warning: str | None


class Interrupted(FaceCleanerError):
    """SIGTERM arrived; a checkpoint was written and ``--resume`` continues from it."""


def train_model(source: Source, class_index: np.ndarray, spec: ModelSpec, config: TrainConfig, run_dir: Path,
                resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``spec`` on ``source`` (labels already encoded) and write ``RUN_DIR/model.pt``."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # the initial weights too are a function of --seed
    backbone, head = spec.build()
    if config.init_backbone:
        load_backbone_weights(backbone, Path(config.init_backbone))
    backbone.to(device)
    head.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        backbone.to(memory_format=torch.channels_last)

    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, fused=device.type == "cuda" or None)
    forward = torch.compile(backbone) if config.compile else backbone
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    samples = len(class_index)
    labels = torch.from_numpy(class_index.astype(np.int64))
    steps_per_epoch = len(index_batches(np.arange(samples), config.batch_size, drop_last=True))
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    margin_warmup = int(config.margin_warmup_epochs * steps_per_epoch)

    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "unreadable": []}
    augment_rng = torch.Generator()
    if resume:
        state = _load_checkpoint(run_dir / CHECKPOINT_FILE, backbone, head, optimizer, scaler, augment_rng)
    unreadable = set(state["unreadable"])
    max_bad = config.max_bad_fraction * samples

    dataset = DecodedImages(source, spec.image_size)
    stop = _StopFlag()
    log_handler = _file_log(run_dir / "train.log")
    metrics: dict[str, Any] = {}
    images_seen, seconds = 0, 0.0
    try:
        with stop:
            for epoch in range(state["epoch"], config.epochs):
                epoch_seed = config.seed * 1_000_003 + epoch
                order = torch.randperm(samples, generator=torch.Generator().manual_seed(epoch_seed)).numpy()
                batches = index_batches(order, config.batch_size, drop_last=True)
                first = state["step_in_epoch"] if epoch == state["epoch"] else 0
                if first == 0:
                    torch.manual_seed(epoch_seed)
                    augment_rng.manual_seed(epoch_seed + 1)
                sums = _EpochSums()
                started = time.perf_counter()
                loader = batch_loader(dataset, batches[first:], config.workers, device.type == "cuda")
                bar = progress_bar(len(batches) * config.batch_size, f"epoch {epoch + 1}/{config.epochs}",
                                   progress, initial=first * config.batch_size)
                for step_in_epoch, (images, ok, indices, _) in enumerate(loader, start=first):
                    global_step = epoch * steps_per_epoch + step_in_epoch
                    unreadable.update(indices[~ok].tolist())
                    if len(unreadable) > max_bad:
                        raise TooManyBadSamples(
                            f"{len(unreadable)} of {samples} samples are unreadable "
                            f"(more than --max-bad-fraction {config.max_bad_fraction})",
                            "fix or remove the broken files, or raise --max-bad-fraction")
                    if ok.sum() < 2:
                        continue
                    x = augment(prepare_images(images[ok], device, channels_last), augment_rng, config.shift)
                    y = labels[indices[ok]].to(device, non_blocking=True)
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * lr_factor(global_step, warmup_steps, total_steps)
                    with autocast(device, config.precision):
                        out = head(forward(x), y, margin=margin_at(global_step, margin_warmup, spec.margin))
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(out.loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    sums.add(out, len(y))
                    bar.update(len(images))
                    bar.set_postfix(loss=f"{out.loss.item():.3f}", refresh=False)
                    if stop.requested:
                        _save_checkpoint(run_dir, spec, backbone, head, optimizer, scaler, augment_rng,
                                         epoch, step_in_epoch + 1, unreadable)
                        raise Interrupted(f"stopped by SIGTERM in epoch {epoch + 1}; checkpoint written to {run_dir}",
                                          "run the same command with --resume to continue")
                bar.close()
                elapsed = time.perf_counter() - started
                images_seen += sums.count
                seconds += elapsed
                last_step = (epoch + 1) * steps_per_epoch - 1
                metrics = sums.summary(epoch + 1, elapsed, optimizer.param_groups[0]["lr"],
                                       margin_at(last_step, margin_warmup, spec.margin), len(unreadable))
                with open(run_dir / METRICS_FILE, "a") as out_file:
                    out_file.write(json.dumps(metrics) + "\n")
                logger.info("epoch %d/%d loss %.4f accuracy %.3f mean angle %.1f° %.0f img/s",
                            epoch + 1, config.epochs, metrics["loss"], metrics["accuracy"],
                            metrics["mean_angle"], metrics["images_per_second"])
                _save_checkpoint(run_dir, spec, backbone, head, optimizer, scaler, augment_rng,
                                 epoch + 1, 0, unreadable)
        backbone.to(memory_format=torch.contiguous_format)
        atomic_save(model_payload(spec, backbone.cpu(), head.cpu()), run_dir / MODEL_FILE)
    finally:
        logging.getLogger("facecleaner").removeHandler(log_handler)
        log_handler.close()
    return _result(run_dir, config, total_steps, len(spec.classes), samples, len(unreadable), metrics,
                   images_seen / seconds if seconds else 0.0)


class _EpochSums:
    """Running sums of loss, accuracy and angle over an epoch's samples."""

    def __init__(self) -> None:
        self.count = 0
        self.loss = 0.0
        self.correct = 0
        self.angle = 0.0

    def add(self, out: Any, n: int) -> None:
        self.count += n
        self.loss += out.loss.item() * n
        self.correct += int(out.correct.sum())
        self.angle += float(torch.rad2deg(torch.arccos(out.target_cosine.clamp(-1, 1))).sum())

    def summary(self, epoch: int, seconds: float, lr: float, margin: float, unreadable: int) -> dict[str, Any]:
        n = max(self.count, 1)
        return {"epoch": epoch, "loss": self.loss / n, "accuracy": self.correct / n, "mean_angle": self.angle / n,
                "lr": lr, "margin": margin, "images": self.count, "seconds": round(seconds, 3),
                "images_per_second": self.count / seconds if seconds else 0.0, "unreadable": unreadable}


def _result(run_dir: Path, config: TrainConfig, steps: int, classes: int, samples: int, unreadable: int,
            metrics: dict[str, Any], speed: float) -> TrainResult:
    if not metrics:  # resumed a finished run: read the last epoch back
        lines = (run_dir / METRICS_FILE).read_text().splitlines() if (run_dir / METRICS_FILE).is_file() else []
        metrics = json.loads(lines[-1]) if lines else {"loss": math.nan, "accuracy": 0.0, "mean_angle": 180.0}
    separated = metrics["accuracy"] >= MIN_SEPARATED_ACCURACY and metrics["mean_angle"] <= MAX_SEPARATED_ANGLE
    warning = None if separated else (
        f"the model has not separated the classes (train accuracy {metrics['accuracy']:.2f}, mean angle to the "
        f"label's sub-center {metrics['mean_angle']:.0f}°): scores from it would drop most samples; train longer "
        "(--epochs), lower --scale or --lr, or start from a pretrained backbone (--init-backbone)")
    return TrainResult(str(run_dir), config.epochs, steps, classes, samples, unreadable, metrics["loss"],
                       metrics["accuracy"], metrics["mean_angle"], speed, separated, warning)


def _save_checkpoint(run_dir: Path, spec: ModelSpec, backbone: torch.nn.Module, head: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, augment_rng: torch.Generator,
                     epoch: int, step_in_epoch: int, unreadable: set[int]) -> None:
    payload = model_payload(spec, backbone, head)
    payload.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), epoch=epoch,
                   step_in_epoch=step_in_epoch, unreadable=sorted(unreadable),
                   torch_rng=torch.get_rng_state(), augment_rng=augment_rng.get_state())
    atomic_save(payload, run_dir / CHECKPOINT_FILE)


def _load_checkpoint(path: Path, backbone: torch.nn.Module, head: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     augment_rng: torch.Generator) -> dict[str, Any]:
    payload = load_payload(path)
    if "optimizer" not in payload:
        raise CheckpointError(f"{path} is a final model, not a training checkpoint", "start a new run")
    _, saved_backbone, saved_head = restore(payload, path)
    backbone.load_state_dict(saved_backbone.state_dict())
    head.load_state_dict(saved_head.state_dict())
    optimizer.load_state_dict(payload["optimizer"])
    scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"])
    augment_rng.set_state(payload["augment_rng"])
    return {"epoch": payload["epoch"], "step_in_epoch": payload["step_in_epoch"],
            "unreadable": payload["unreadable"]}


def _file_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log = logging.getLogger("facecleaner")
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


class _StopFlag:
    """Context manager turning SIGTERM into a flag checked between steps (signals reach the main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def result_dict(result: TrainResult) -> dict[str, Any]:
    return asdict(result)
