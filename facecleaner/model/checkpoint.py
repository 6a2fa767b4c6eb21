"""The run directory's model files: ``model.pt`` (final) and ``checkpoint.pt`` (every epoch, for --resume).

Both are plain dicts of tensors and primitives, written atomically and read with ``weights_only=True``
(nothing is unpickled). ``model.pt`` carries everything ``score`` needs: backbone and head weights, the
label map and the model's settings, so a run dir is self-contained.

Files are read memory-mapped (``mmap=True``): a tensor's pages are read from the file when touched and stay
file-backed, so a rank that needs a few rows of a large head maps only those (:func:`read_rows`), and
``score`` does not copy the head into anonymous memory before moving it to its device. A head sharded over
ranks is checkpointed as one file per rank (:data:`HEAD_SHARD_FORMAT`, named by :func:`head_shard_name`),
which the main ``checkpoint.pt`` names; the final ``model.pt`` is still one file, its head assembled from the
ranks' rows in a raw file on disk (:func:`write_rows`, :func:`save_model_from_rows`), never in one process's
memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from facecleaner import __version__
from facecleaner.errors import CheckpointError
from facecleaner.fileio import atomic_output, fsync_path
from facecleaner.model.backbones import build_backbone
from facecleaner.model.head import SubCenterArcFace

MODEL_FORMAT = "facecleaner-model/1"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
HEAD_SHARD_FORMAT = "facecleaner-head-shard/1"
_HEAD_SHARD_PREFIX = "checkpoint.head-"
#: Bytes of rows moved per block by read_rows and write_rows: bounds the file pages (or host copies of device
#: rows) a process holds beyond its own rows.
ROW_BLOCK_BYTES = 64 * 2 ** 20


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
        return self.build_backbone(), self.build_head()

    def build_backbone(self) -> torch.nn.Module:
        return build_backbone(self.backbone, embedding_size=self.embedding_size, image_size=self.image_size,
                              dropout=self.dropout)

    def build_head(self, device: torch.device | str | None = None) -> SubCenterArcFace:
        """The head, randomly initialised; on the ``"meta"`` device it has shapes but no memory (for loading)."""
        with torch.device(device or "cpu"):
            return SubCenterArcFace(len(self.classes), self.subcenters, self.embedding_size, self.scale,
                                    self.margin)


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


def save_durably(payload: dict[str, Any], path: Path) -> None:
    """torch.save straight to ``path`` and flush it to disk: for a new name that nothing refers to yet (a head
    shard, published later by the checkpoint that names it)."""
    torch.save(payload, path)
    fsync_path(path)


def load_payload(path: Path, expected_format: str = MODEL_FORMAT) -> dict[str, Any]:
    """Read one of our files safely, memory-mapped (see the module notes); anything else is a CheckpointError
    naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist",
                              "give the RUN_DIR written by `facecleaner train` (it holds model.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise CheckpointError(f"{path} is not a readable facecleaner model ({type(exc).__name__})",
                              "point at a run dir written by `facecleaner train`, or retrain") from exc
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        raise CheckpointError(f"{path} is not a facecleaner model file",
                              "point at a run dir written by `facecleaner train`")
    return payload


def head_shard_name(save_id: str, rank: int, world: int) -> str:
    """The file of ``rank``'s head shard in the checkpoint ``save_id`` (unique to one save)."""
    return f"{_HEAD_SHARD_PREFIX}{save_id}.{rank}-of-{world}.pt"


def stale_head_shards(run_dir: Path, keep: list[str]) -> list[Path]:
    """Head shard files in ``run_dir`` that ``keep`` (the published checkpoint's) does not name: an earlier
    checkpoint's, or a save that died before its checkpoint.pt was published."""
    return sorted(path for path in run_dir.glob(f"{_HEAD_SHARD_PREFIX}*.pt") if path.name not in keep)


def read_rows(path: Path, pick: Callable[[dict[str, Any]], torch.Tensor], first: int, out: torch.Tensor,
              expected_format: str = HEAD_SHARD_FORMAT) -> None:
    """Copy rows ``first …`` of the tensor that ``pick`` finds in the file ``path`` into ``out`` (any device).

    A block of :data:`ROW_BLOCK_BYTES` at a time, each from its own memory-mapped load that is dropped before
    the next: the process never maps more of the file than one block, whatever the file's size."""
    block_rows = max(1, ROW_BLOCK_BYTES // max(1, out[:1].numel() * out.element_size()))
    for start in range(0, len(out), block_rows):
        stored = pick(load_payload(path, expected_format))
        if stored.shape[1:] != out.shape[1:] or len(stored) < first + len(out):
            raise CheckpointError(f"{path} holds a {tuple(stored.shape)} tensor where rows {first}–"
                                  f"{first + len(out)} of width {tuple(out.shape[1:])} were expected",
                                  "resume with the settings the run was started with")
        end = min(start + block_rows, len(out))
        out[start:end].copy_(stored[first + start:first + end])
        del stored


def write_rows(path: Path, first: int, rows: torch.Tensor) -> None:
    """Write ``rows`` (any device) into the raw row-major file ``path`` from row ``first`` on, a block of
    :data:`ROW_BLOCK_BYTES` at a time (the file already has its full size)."""
    row_bytes = max(1, rows[:1].numel() * rows.element_size())
    block_rows = max(1, ROW_BLOCK_BYTES // row_bytes)
    with open(path, "r+b") as handle:
        handle.seek(first * row_bytes)
        for block in rows.detach().split(block_rows):
            handle.write(block.cpu().contiguous().view(torch.uint8).numpy().data)


def save_model_from_rows(path: Path, spec: ModelSpec, backbone: torch.nn.Module, rows_file: Path,
                         shape: tuple[int, int], dtype: torch.dtype) -> None:
    """Write model.pt with the head read from the raw file written by :func:`write_rows`, memory-mapped: the
    head's pages stay file-backed while torch.save copies them, so no process holds it in anonymous memory."""
    weight = torch.from_file(str(rows_file), shared=False, size=shape[0] * shape[1], dtype=dtype).view(shape)
    atomic_save(model_payload(spec, backbone, weight), path)


def model_payload(spec: ModelSpec, backbone: torch.nn.Module, head_weight: torch.Tensor | None) -> dict[str, Any]:
    """The model file's contents; the head is its (C·K, D) sub-center weight in class order, however it was
    held while training (whole, or sharded and assembled). Without ``head_weight`` (a sharded checkpoint,
    whose head is in its shard files) there is no ``head``."""
    payload = {"format": MODEL_FORMAT, "spec": asdict(spec), "backbone": backbone.state_dict()}
    if head_weight is not None:
        payload["head"] = {"weight": head_weight.detach()}
    return payload


def save_model(path: Path, spec: ModelSpec, backbone: torch.nn.Module, head: SubCenterArcFace) -> None:
    atomic_save(model_payload(spec, backbone, head.weight), path)


def restore(payload: dict[str, Any], path: Path) -> tuple[ModelSpec, torch.nn.Module, SubCenterArcFace]:
    """Rebuild backbone and head from a payload written by :func:`model_payload`. The head takes the payload's
    tensor itself (memory-mapped by :func:`load_payload`), not a copy of it."""
    if "head" not in payload:
        raise CheckpointError(f"{path} is a checkpoint of a sharded training run: its head is in the shard files "
                              "beside it", f"give the run's {MODEL_FILE} (finish the run with --resume)")
    spec = ModelSpec(**payload["spec"])
    backbone, head = spec.build_backbone(), spec.build_head("meta")
    try:
        backbone.load_state_dict(payload["backbone"])
        head.load_state_dict(payload["head"], assign=True)
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


#: Values checked at a time: a head of millions of identities, mapped from model.pt, is never copied whole.
_CHECK_BLOCK = 1 << 24


def _non_finite(tensor: torch.Tensor) -> int:
    """How many values of ``tensor`` are NaN or infinite, counted a block at a time."""
    flat = tensor.detach().reshape(-1)
    return sum(int((~torch.isfinite(block)).sum()) for block in flat.split(_CHECK_BLOCK))


def check_finite_weights(tensors: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged training): every embedding from them would be NaN.
    ``what`` names the model in the error ("the model in run/"), ``fix`` says what to do instead."""
    bad = {name: count for name, t in tensors.items() if t.is_floating_point() and (count := _non_finite(t))}
    if bad:
        raise CheckpointError(f"{what} has {sum(bad.values())} non-finite weights "
                              f"(in {', '.join(list(bad)[:3])}{', …' if len(bad) > 3 else ''})",
                              f"its training diverged: retrain (a lower --lr, or --precision fp32){fix}")
