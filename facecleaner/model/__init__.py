"""Backbones, the sub-center head, and the checkpoint format that ties them to a label map."""

from __future__ import annotations

import torch


def prepare_images(images: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 NHWC batch → float32 NCHW on ``device``, normalised as insightface does: (x/255 − 0.5)/0.5.

    Normalising after the transfer moves a quarter of the bytes a float batch would.
    """
    batch = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if channels_last:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch.contiguous()
