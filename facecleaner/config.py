"""Training settings: what the user asked for (``TrainConfig``) and what it resolved to for this data.

``None`` means "choose for me"; :func:`resolve` fills every such field from the dataset size and the
device, and the resolved copy is saved as ``RUN_DIR/config.json`` so a run can be reproduced exactly.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from facecleaner.errors import InputError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TrainConfig:
    backbone: str | None = None
    subcenters: int = 3
    margin: float = 0.5
    scale: float | None = None
    embedding_size: int = 512
    image_size: int = 112
    epochs: int | None = None
    batch_size: int = 128
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float | None = None
    margin_warmup_epochs: float | None = None
    grad_clip: float = 5.0
    dropout: float = 0.0
    shift: float = 0.1
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    seed: int = 0
    max_bad_fraction: float = 0.01
    init_backbone: str | None = None
    compile: bool | None = None
    sample_rate: float = 1.0

    def validate(self) -> None:
        """Reject impossible settings before any data is read."""
        checks = [
            (self.subcenters >= 1, "--subcenters must be at least 1"),
            (0.0 <= self.margin < math.pi / 2, "--margin must be in [0, π/2) radians (0.5 is the paper's)"),
            (self.scale is None or self.scale > 0, "--scale must be positive"),
            (self.embedding_size >= 2, "--embedding-size must be at least 2"),
            (self.image_size >= 16, "--image-size must be at least 16"),
            (self.epochs is None or self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 2, "--batch-size must be at least 2 (batch norm needs two samples)"),
            (self.lr is None or self.lr > 0, "--lr must be positive"),
            (0.0 <= self.max_bad_fraction <= 1.0, "--max-bad-fraction must be in [0, 1]"),
            (0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)"),
            (0.0 <= self.shift < 0.5, "--shift must be in [0, 0.5)"),
            (0.0 < self.sample_rate <= 1.0, "--sample-rate must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message, "fix the option and run again")


# The demo's training recipe. The paper's fixed 75° rule assumes the geometry of a large face model trained
# on millions of images: unrelated identities near-orthogonal, so an image filed under the wrong identity lies
# near 90° from that identity's dominant sub-center. The tiny CPU model gets close when it learns slowly from
# many images per identity, each seen few times. With train's defaults (lr 0.05, 40 epochs of 30 images per
# identity) unrelated identities sit 90 ± 11° apart and noisy images are partly memorised into their labels
# (recall 0.77); with this recipe they sit 90 ± 9° apart with almost no memorisation (recall 0.92). On small
# real sets a low rate underfits instead, so this is not train's default. Measured in benchmarks/RESULTS.md.
DEMO_IDENTITIES = 100
DEMO_IMAGES_PER_IDENTITY = 100
DEMO_EPOCHS = 20
DEMO_LR = 0.005


def auto_scale(num_classes: int) -> float:
    """A logit scale the softmax can saturate with: 64 for large sets, smaller for few classes.

    With few classes s=64 makes the loss landscape so sharp that a model trained from scratch stalls with
    every sample far from its class; AdaCos's bound √2·ln(C−1) is the smallest useful scale.
    """
    return float(min(64.0, max(16.0, 4.0 * math.sqrt(2.0) * math.log(max(num_classes - 1, 2)))))


def auto_epochs(num_samples: int) -> int:
    """Enough passes to converge: 20 on millions of images (as insightface trains MS1M), more on small sets."""
    return int(min(40, max(20, round(2_000_000 / max(num_samples, 1)))))


def default_workers(device: torch.device) -> int:
    """Decode in worker processes on GPU machines; on the CPU the workers would compete with the model."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def resolve(config: TrainConfig, num_samples: int, num_classes: int) -> TrainConfig:
    """Fill every automatic field for this dataset and machine."""
    from facecleaner.model.runtime import resolve_device, resolve_precision  # torch only when training

    device = resolve_device(config.device)
    backbone = config.backbone or ("r50" if device.type == "cuda" else "tiny")
    epochs = config.epochs or auto_epochs(num_samples)
    return replace(
        config,
        backbone=backbone,
        scale=config.scale or auto_scale(num_classes),
        epochs=epochs,
        lr=config.lr or 0.1 * config.batch_size / 256,
        warmup_epochs=config.warmup_epochs if config.warmup_epochs is not None else min(2.0, epochs / 10),
        margin_warmup_epochs=(config.margin_warmup_epochs if config.margin_warmup_epochs is not None
                              else epochs / 4),
        device=str(device),
        precision=resolve_precision(config.precision, device),
        workers=config.workers if config.workers is not None else default_workers(device),
        compile=config.compile if config.compile is not None else device.type == "cuda",
    )


def save_config(config: TrainConfig, path: Path, extra: dict | None = None) -> None:
    data = {"train": asdict(config), **(extra or {})}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_config(path: Path) -> TrainConfig:
    """Read the ``train`` section of a saved config.json or a user's ``--config`` TOML/JSON file."""
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read config {path}: {exc}", "give a TOML or JSON file") from exc
    section = data.get("train", data)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise InputError(f"config {path} has unknown settings: {', '.join(unknown)}",
                         f"use only: {', '.join(sorted(known))}")
    return TrainConfig(**section)
