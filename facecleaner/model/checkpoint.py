"""The run directory's model files: ``model.pt`` (final) and ``checkpoint.pt`` (every epoch, for --resume).

Both are plain dicts of tensors and primitives, written atomically and read with ``weights_only=True``
(nothing is unpickled). ``model.pt`` carries everything ``score`` needs: backbone and head weights, the
label map and the model's settings, so a run dir is self-contained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from facecleaner import __version__
from facecleaner.errors import CheckpointError
from facecleaner.fileio import atomic_output
from facecleaner.model.backbones import build_backbone
from facecleaner.model.head import SubCenterArcFace

MODEL_FORMAT = "facecleaner-model/1"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class ModelSpec:
    """What it takes to rebuild the network and read its outputs: architecture, head and label map."""

    backbone: str
    embedding_size: int
    image_size: int
    subcenters: int
    scale: float
    margin: float
    classes: list = field(default_factory=list)
    dropout: float = 0.0
    facecleaner_version: str = __version__

    def build(self) -> tuple[torch.nn.Module, SubCenterArcFace]:
        backbone = build_backbone(self.backbone, embedding_size=self.embedding_size, image_size=self.image_size,
                                  dropout=self.dropout)
        head = SubCenterArcFace(len(self.classes), self.subcenters, self.embedding_size, self.scale, self.margin)
        return backbone, head


@dataclass
class LoadedModel:
    spec: ModelSpec
    backbone: torch.nn.Module
    head: SubCenterArcFace
    sha256: str


def atomic_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name in the same folder, then rename: a crash never leaves half a file."""
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_payload(path: Path) -> dict[str, Any]:
    """Read one of our files safely; anything else is a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist",
                              "give the RUN_DIR written by `facecleaner train` (it holds model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise CheckpointError(f"{path} is not a readable facecleaner model ({type(exc).__name__})",
                              "point at a run dir written by `facecleaner train`, or retrain") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not a facecleaner model file",
                              "point at a run dir written by `facecleaner train`")
    return payload


def model_payload(spec: ModelSpec, backbone: torch.nn.Module, head_weight: torch.Tensor) -> dict[str, Any]:
    """The model file's contents; the head is its (C·K, D) sub-center weight in class order, however it was
    held while training (whole, or sharded and gathered)."""
    return {"format": MODEL_FORMAT, "spec": asdict(spec),
            "backbone": backbone.state_dict(), "head": {"weight": head_weight.detach()}}


def save_model(path: Path, spec: ModelSpec, backbone: torch.nn.Module, head: SubCenterArcFace) -> None:
    atomic_save(model_payload(spec, backbone, head.weight), path)


def restore(payload: dict[str, Any], path: Path) -> tuple[ModelSpec, torch.nn.Module, SubCenterArcFace]:
    """Rebuild backbone and head from a payload written by :func:`model_payload`."""
    spec = ModelSpec(**payload["spec"])
    backbone, head = spec.build()
    try:
        backbone.load_state_dict(payload["backbone"])
        head.load_state_dict(payload["head"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not match its own settings: {str(exc).splitlines()[0]}",
                              "the file is damaged; retrain or use another checkpoint") from exc
    return spec, backbone, head


def load_model(run_dir: Path) -> LoadedModel:
    """Load ``RUN_DIR/model.pt`` (or a model file given directly) for scoring."""
    path = run_dir / MODEL_FILE if run_dir.is_dir() else run_dir
    if run_dir.is_dir() and not path.is_file():
        hint = " (training did not finish: resume it with --resume)" if (run_dir / CHECKPOINT_FILE).is_file() else ""
        raise CheckpointError(f"{run_dir} has no {MODEL_FILE}{hint}",
                              "give the RUN_DIR of a finished `facecleaner train`")
    payload = load_payload(path)
    spec, backbone, head = restore(payload, path)
    return LoadedModel(spec, backbone, head, file_sha256(path))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_finite_weights(tensors: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged training): every embedding from them would be NaN.
    ``what`` names the model in the error ("the model in run/"), ``fix`` says what to do instead."""
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in tensors.items()
           if t.is_floating_point() and not torch.isfinite(t).all()}
    if bad:
        raise CheckpointError(f"{what} has {sum(bad.values())} non-finite weights "
                              f"(in {', '.join(list(bad)[:3])}{', …' if len(bad) > 3 else ''})",
                              f"its training diverged: retrain (a lower --lr, or --precision fp32){fix}")
