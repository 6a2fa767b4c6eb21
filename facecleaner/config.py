"""Training settings: what the user asked for (``TrainConfig``) and what it resolved to for this data.

``None`` means "choose for me"; :func:`resolve` fills every such field from the dataset size and the
device, and the resolved copy is saved as ``RUN_DIR/config.json`` so a run can be reproduced exactly.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facecleaner.errors import InputError
from facecleaner.fileio import atomic_output

if TYPE_CHECKING:
    import torch

#: Largest ``--seed``: the per-epoch and per-step seeds derived from it must fit torch's 64-bit seeds.
MAX_SEED = 2 ** 31 - 1
#: Largest ``--subcenters``: scores store a sub-center's index as int8.
MAX_SUBCENTERS = 128
#: ``--margin`` stays below this (radians): from π/2 on, even a sample on its sub-center gets cos(m) ≤ 0.
MAX_MARGIN = math.pi / 2


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
            (1 <= self.subcenters <= MAX_SUBCENTERS, f"--subcenters must be in [1, {MAX_SUBCENTERS}]"),
            (0.0 <= self.margin < MAX_MARGIN, "--margin must be in [0, π/2) radians (0.5 is the paper's)"),
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
            (0 <= self.seed <= MAX_SEED, f"--seed must be in [0, {MAX_SEED}]"),
            (self.workers is None or self.workers >= 0, "--workers must be at least 0"),
            (self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
             "--device must be auto, cpu, cuda or cuda:N"),
            (0.0 <= self.momentum < 1.0, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be at least 0"),
            (self.grad_clip > 0, "grad_clip must be positive"),
            (self.warmup_epochs is None or self.warmup_epochs >= 0, "warmup_epochs must be at least 0"),
            (self.margin_warmup_epochs is None or self.margin_warmup_epochs >= 0,
             "margin_warmup_epochs must be at least 0"),
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
    """Write the resolved settings (and facts about the run) as ``config.json``, atomically."""
    data = {"train": asdict(config), **(extra or {})}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_config(path: Path) -> TrainConfig:
    """Read the ``train`` section of a saved config.json or a user's ``--config`` TOML/JSON file."""
    return TrainConfig(**config_settings(path))


def config_settings(path: Path) -> dict[str, Any]:
    """The settings a config file writes down, by name, checked for names and types (not yet for ranges): the
    CLI needs to know which settings a ``--config`` file gives, not only their values."""
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read config {path}: {exc}", "give a TOML or JSON file") from exc
    section = data.get("train", data) if isinstance(data, dict) else data
    if not isinstance(section, dict):
        raise InputError(f"config {path} does not hold a table of settings", "write one setting per line, e.g. "
                         "epochs = 20, under [train]")
    known = {f.name: f.type for f in fields(TrainConfig)}
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise InputError(f"config {path} has unknown settings: {', '.join(unknown)}",
                         f"use only: {', '.join(sorted(known))}")
    wrong = [f"{name} = {value!r} (expected {known[name]})" for name, value in section.items()
             if not _has_type(value, known[name])]
    if wrong:
        raise InputError(f"config {path} has settings of the wrong type: {', '.join(wrong)}",
                         "write numbers without quotes and names in quotes")
    return section


def _has_type(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a TrainConfig field annotated ``annotation`` (e.g. ``"float | None"``); an integer
    fits a float field, a boolean fits only a bool field."""
    accepted = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (type(None),)}
    kinds = [kind for part in annotation.split("|") for kind in accepted[part.strip()]]
    return isinstance(value, tuple(kinds)) and (not isinstance(value, bool) or bool in kinds)


def explicit_settings(config: TrainConfig) -> list[str]:
    """The names of the settings that differ from ``TrainConfig()``'s defaults: what a caller that does not say
    which settings it gave asked for."""
    defaults = TrainConfig()
    return [f.name for f in fields(TrainConfig) if getattr(config, f.name) != getattr(defaults, f.name)]


def resume_conflicts(asked: TrainConfig, saved: TrainConfig, num_samples: int, num_classes: int,
                     given: Iterable[str] | None = None) -> list[str]:
    """The settings asked for that differ from a run's saved ones, as ``--option value (the run has …)``.

    ``given`` names the settings the caller gave (the CLI: its flags and the ``--config`` file's keys), so that
    ``--seed 0`` against a run with seed 5 is a difference although 0 is the default; without it, the settings
    that differ from the defaults count as given. Only ``epochs`` may change on ``--resume``; a setting not
    given is no difference, and one given is compared as resolved (``--precision bf16`` on the CPU is the fp32
    the run recorded).
    """
    resolved = resolve(asked, num_samples, num_classes)
    names = explicit_settings(asked) if given is None else [f.name for f in fields(TrainConfig) if f.name in given]
    return [f"{_flag(name, getattr(asked, name))} (the run has {getattr(saved, name)})"
            for name in names if name != "epochs" and getattr(resolved, name) != getattr(saved, name)]


def _flag(name: str, value: Any) -> str:
    option = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{option}"
    return f"--{option} {value}"
