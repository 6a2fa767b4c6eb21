"""The export-model job: a run's backbone out for other tools, as an arcface_torch ``backbone.pth`` or as ONNX.

- ``pth``: the backbone's state dict, a plain ``{name: tensor}`` dict under arcface_torch's parameter names (the
  names ``train --init-backbone`` reads with :func:`facecleaner.model.backbones.load_backbone_weights`), saved
  with ``torch.save`` and loadable with ``torch.load(weights_only=True)``.
- ``onnx``: the backbone in eval mode through ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter,
  torch's default since 2.9; the TorchScript one is deprecated), one float32 input ``input`` of shape
  ``[N, 3, S, S]`` with a dynamic batch axis, already normalised as :data:`NORMALISATION` says, and one output
  ``embedding`` ``[N, E]``, not L2-normalised. Before the file is published, onnxruntime runs it on random
  batches of 2 and 1 and its embeddings are compared with the backbone's; a difference past
  :data:`RELATIVE_TOLERANCE` of the embeddings' scale fails the export.

Either file is written under a temporary name and renamed when complete; an existing ``--out`` is refused (an
export never overwrites), as is an ``--out`` that is one of the run's own files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facecleaner import __version__
from facecleaner.errors import FaceCleanerError, InputError
from facecleaner.fileio import atomic_output, check_distinct, check_file_outputs, recover_outputs
from facecleaner.jobs.folds import fold_dir, is_folded

if TYPE_CHECKING:
    from facecleaner.model.checkpoint import LoadedModel

FORMATS = ("pth", "onnx")
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
#: How score feeds the backbone (:func:`facecleaner.model.prepare_images` after
#: :func:`facecleaner.sources.images.decode_image`), which an ONNX user must repeat.
NORMALISATION = ("RGB channel order, NCHW float32; pixel values x in 0..255 mapped to (x - 127.5) / 127.5, "
                 "i.e. [-1, 1]; the face resized to the model's image size (bilinear, no crop), as score sees it")
OUTPUT_NOTE = "the embedding, not L2-normalised: divide by its norm before comparing by cosine"
#: Largest tolerated |onnxruntime − torch| difference, as a share of the largest |embedding| value.
RELATIVE_TOLERANCE = 1e-4
#: onnxruntime checks the exported file on batches of these sizes (2 as traced, 1 for the dynamic axis).
CHECK_BATCHES = (2, 1)
ONNX_INSTALL = 'pip install "facecleaner[onnx]"'

__all__ = ["FORMATS", "INPUT_NAME", "NORMALISATION", "OUTPUT_NAME", "export_model"]


def export_model(run_dir: str | Path, fmt: str, out: str | Path) -> dict[str, Any]:
    """Write the backbone of ``run_dir`` (a finished train's RUN_DIR, or its ``model.pt``) to ``out`` as
    ``fmt`` (``pth`` or ``onnx``); returns a JSON-ready summary.

    Raises :class:`~facecleaner.errors.FaceCleanerError` for an unknown format, a missing or unfinished run, a
    ``train --folds`` RUN_DIR (export one of its ``fold-N`` runs), an ``--out`` that exists or is one of the
    run's files, onnx packages that are not installed, or an ONNX file whose outputs differ from torch's.
    """
    from facecleaner.model.checkpoint import MODEL_FILE, check_finite_weights, file_sha256, load_model

    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}", "choose pth or onnx")
    run_dir, out = Path(run_dir), Path(out)
    if is_folded(run_dir):
        raise InputError(f"{run_dir} holds the models of `train --folds`, one per fold, not one model",
                         f"export one of them, e.g. {fold_dir(run_dir, 0)}")
    model_file = run_dir / MODEL_FILE if run_dir.is_dir() else run_dir
    check_distinct(_inputs(model_file), {"--out": out})
    check_file_outputs({"--out": out})
    _refuse_existing(out)
    if fmt == "onnx":
        _onnx_modules()  # before loading the model: a missing package is the first thing to say
    model = load_model(run_dir)
    backbone = model.backbone.eval()
    check_finite_weights(backbone.state_dict(), f"the backbone in {model_file}", "")
    recover_outputs([out])
    summary: dict[str, Any] = {
        "format": fmt, "out": os.path.abspath(out), "model": os.path.abspath(model_file), "model_sha256": model.sha256,
        "backbone": model.spec.backbone, "embedding_size": model.spec.embedding_size,
        "image_size": model.spec.image_size, "dropout": model.spec.dropout,
    }
    if fmt == "pth":
        summary |= _write_pth(backbone, out)
    else:
        summary |= _write_onnx(model, out)
    summary["out_sha256"] = file_sha256(out)
    return summary


def _inputs(model_file: Path) -> dict[str, Path]:
    """The model file, and the other files a train run keeps beside it: an export may sit in RUN_DIR, never on
    one of them."""
    from facecleaner.jobs.train import run_files
    from facecleaner.model.checkpoint import MODEL_FILE

    inputs = {"run's model file": model_file}
    if model_file.name == MODEL_FILE:
        inputs |= {f"run's {path.name}": path for path in run_files(model_file.parent)}
    return inputs


def _refuse_existing(out: Path) -> None:
    """InputError when ``out`` exists (a dangling symlink included): an export never overwrites a file."""
    if out.exists() or out.is_symlink():
        raise InputError(f"--out {out} already exists",
                         "give a new file name, or remove the old file; an export never overwrites")


def _write_pth(backbone: torch.nn.Module, out: Path) -> dict[str, Any]:
    """The state dict as arcface_torch saves it (``torch.save(backbone.state_dict())``), as a plain dict."""
    state = {name: tensor.detach().clone().contiguous() for name, tensor in backbone.state_dict().items()}
    with atomic_output(out) as tmp:
        torch.save(state, tmp)
        _refuse_existing(out)  # nobody created it meanwhile
    return {"tensors": len(state), "parameters": int(sum(p.numel() for p in backbone.parameters())),
            "loads_with": "facecleaner train --init-backbone, or backbone.load_state_dict(torch.load(..., "
                          "weights_only=True)) in arcface_torch"}


def _onnx_modules() -> tuple[Any, Any]:
    """``onnx`` and ``onnxruntime``, or a FaceCleanerError saying how to install them (onnxscript too, which
    torch's exporter needs)."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) imports it)
    except ImportError as exc:
        raise FaceCleanerError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages ({exc})",
                               ONNX_INSTALL) from exc
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter logs optional-package notes and deprecation warnings on stderr; they are not ours to show."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_logger.setLevel(level)


def _write_onnx(model: LoadedModel, out: Path) -> dict[str, Any]:
    """Export, stamp the file's metadata, check it with onnxruntime, then publish it."""
    onnx, onnxruntime = _onnx_modules()
    spec, backbone = model.spec, model.backbone
    size = spec.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((CHECK_BATCHES[0], 3, size, size), generator=generator) * 2 - 1
    batch = torch.export.Dim("batch")
    with atomic_output(out) as tmp:
        try:
            with _quiet_exporter(), torch.no_grad():
                torch.onnx.export(backbone, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes=({0: batch},))
        except TypeError as exc:  # a torch before 2.6 lacks the arguments of the torch.export-based exporter
            raise FaceCleanerError(f"torch {torch.__version__} cannot export this model to ONNX ({exc})",
                                   "ONNX export needs torch 2.6 or later: pip install -U torch") from exc
        proto = onnx.load(str(tmp))
        opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
        _stamp(onnx, proto, model)
        onnx.save(proto, str(tmp))
        max_diff, scale = _check_onnx(onnxruntime, tmp, backbone, size, generator)
        _refuse_existing(out)  # nobody created it meanwhile
    return {"input": {"name": INPUT_NAME, "shape": ["N", 3, size, size], "dtype": "float32",
                      "normalisation": NORMALISATION},
            "output": {"name": OUTPUT_NAME, "shape": ["N", spec.embedding_size], "dtype": "float32",
                       "l2_normalised": False, "note": OUTPUT_NOTE},
            "dynamic_batch": True, "opset": opset,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "check": {"runtime": f"onnxruntime {onnxruntime.__version__}", "batches": list(CHECK_BATCHES),
                      "max_abs_diff": max_diff, "embedding_scale": scale, "relative_tolerance": RELATIVE_TOLERANCE}}


def _stamp(onnx: Any, proto: Any, model: LoadedModel) -> None:
    """Write what a user of the file needs into it: the input's normalisation, the output, the source model."""
    spec = model.spec
    proto.doc_string = (f"facecleaner {spec.backbone} backbone. Input {INPUT_NAME!r} [N, 3, {spec.image_size}, "
                        f"{spec.image_size}]: {NORMALISATION}. Output {OUTPUT_NAME!r} [N, {spec.embedding_size}]: "
                        f"{OUTPUT_NOTE}.")
    fields = {"facecleaner_version": __version__, "backbone": spec.backbone,
              "embedding_size": str(spec.embedding_size), "image_size": str(spec.image_size),
              "input_normalisation": NORMALISATION, "output": OUTPUT_NOTE, "source_model_sha256": model.sha256}
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, fields)


def _check_onnx(onnxruntime: Any, path: Path, backbone: torch.nn.Module, size: int,
                generator: torch.Generator) -> tuple[float, float]:
    """Run the file in onnxruntime on random batches and compare with the backbone; raise if they differ.
    Returns the largest absolute difference and the largest absolute embedding value."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_diff, scale = 0.0, 0.0
    for count in CHECK_BATCHES:
        images = torch.rand((count, 3, size, size), generator=generator) * 2 - 1
        with torch.no_grad():
            expected = backbone(images).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
        if got.shape != expected.shape:
            raise FaceCleanerError(f"the exported ONNX model gives embeddings of shape {list(got.shape)} for a batch "
                                   f"of {count}, torch {list(expected.shape)}",
                                   "this is a facecleaner or torch exporter bug: report it, and use --format pth")
        max_diff = max(max_diff, float(np.abs(got.astype(np.float64) - expected).max()))
        scale = max(scale, float(np.abs(expected).max()))
    if not max_diff <= RELATIVE_TOLERANCE * max(scale, 1e-12):
        raise FaceCleanerError(f"the exported ONNX model's embeddings differ from torch's by up to {max_diff:.3g} "
                               f"(embeddings up to {scale:.3g}; tolerance {RELATIVE_TOLERANCE:g} of that)",
                               "this is a facecleaner or torch exporter bug: report it, and use --format pth")
    return max_diff, scale
