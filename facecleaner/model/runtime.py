"""Where and in what precision the network runs: shared by train and score so both decide alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from facecleaner.errors import InputError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA GPU when there is one, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is visible",
                         "use --device cpu (or auto), or check CUDA_VISIBLE_DEVICES and the driver")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 on GPUs that support it, else fp16 on CUDA, fp32 on the CPU."""
    if name not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}", f"use one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        return "fp32"
    if name == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return name


def place_backbone(backbone: torch.nn.Module, device: torch.device) -> bool:
    """Move ``backbone`` to ``device``, in channels_last layout on CUDA (faster convolutions there); returns
    whether it is channels_last, which its input batches must then match (:func:`facecleaner.model.prepare_images`)."""
    backbone.to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    return channels_last


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the backbone; fp32 means none."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Put modules in eval mode and no-grad for the block, restoring their previous mode afterwards."""
    previous = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, was_training in zip(modules, previous, strict=True):
            module.train(was_training)
