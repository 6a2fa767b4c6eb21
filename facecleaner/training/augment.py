"""Training-time augmentation on the device, one batched op: horizontal flip plus a small random shift and zoom.

Random shifts make memorising a mislabelled image far harder than learning an identity, which is what keeps
label noise out of the dominant sub-center on small sets. All randomness comes from the caller's generator,
so a resumed run sees the same augmentations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, generator: torch.Generator, shift: float) -> torch.Tensor:
    """Flip half the batch; with ``shift`` > 0 also translate by up to ``shift`` of the size and zoom ±shift."""
    n = len(images)
    draws = torch.rand(n, 4, generator=generator)
    flip = draws[:, 0] < 0.5
    if shift <= 0:
        return torch.where(flip.to(images.device)[:, None, None, None], images.flip(3), images)
    scale = 1.0 + shift * (2 * draws[:, 1] - 1)
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale * sign
    theta[:, 1, 1] = scale
    theta[:, 0, 2] = 2 * shift * (2 * draws[:, 2] - 1)
    theta[:, 1, 2] = 2 * shift * (2 * draws[:, 3] - 1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
