"""The Sub-center ArcFace head: K sub-centers per class, class cosine = max over them, additive angular margin.

Loss (Deng et al., TPAMI arXiv 1801.07698v4): softmax cross-entropy over ``s·cos θ_j`` for j ≠ y and
``s·cos(θ_y + m)`` for the label. Where ``θ_y + m > π`` the margin logit would turn back up; as in the
reference implementations it is replaced there by ``cos θ_y − m·sin(π − m)`` so the logit stays monotonic
in θ_y. The margin and softmax always run in float32, whatever the autocast precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# sin θ = sqrt(1 − cos²θ) has an infinite derivative at cos θ = ±1; bounding 1 − cos² keeps fp16/bf16
# batches (whose cosines round to exactly ±1) from producing inf·0 = NaN gradients.
_MIN_SIN_SQUARED = 1e-6


def margin_logits(class_cosine: torch.Tensor, labels: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """Scaled logits with the additive angular margin on each row's label column (float32)."""
    cosine = class_cosine.float().clamp(-1.0, 1.0)
    target = cosine.gather(1, labels[:, None])
    sin_target = torch.sqrt((1.0 - target * target).clamp_min(_MIN_SIN_SQUARED))
    with_margin = target * math.cos(margin) - sin_target * math.sin(margin)
    # θ + m > π ⇔ cos θ < cos(π − m): fall back to a linear penalty that keeps the logit decreasing in θ.
    fallback = target - math.sin(math.pi - margin) * margin
    final_target = torch.where(target > math.cos(math.pi - margin), with_margin, fallback)
    return cosine.scatter(1, labels[:, None], final_target) * scale


def class_cosines(embeddings: torch.Tensor, weight: torch.Tensor, subcenters: int) -> torch.Tensor:
    """max over each class's K sub-centers of cos(x, W[j, k]): (N, rows/K) from a (rows, D) weight in class order.

    The matmul runs in the autocast dtype on the raw weight and its (N, rows) result is divided by the row
    norms: the same cosine as normalising the weight first, without a second (rows, D) matrix per step.
    """
    inverse_norm = weight.float().norm(dim=1).clamp_min(1e-12).reciprocal()
    cosine = F.linear(F.normalize(embeddings.float()), weight).float().mul_(inverse_norm)
    return cosine.view(len(embeddings), -1, subcenters).amax(dim=2)


@dataclass(frozen=True)
class HeadOutput:
    """The loss plus what the trainer logs: the label's cosine and whether the argmax class is right."""

    loss: torch.Tensor
    target_cosine: torch.Tensor
    correct: torch.Tensor


class SubCenterArcFace(nn.Module):
    """``num_classes × subcenters`` unit sub-centers, stored as one (C·K, D) matrix so one matmul scores all."""

    def __init__(self, num_classes: int, subcenters: int = 3, embedding_size: int = 512,
                 scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1 or subcenters < 1:
            raise ValueError("num_classes and subcenters must be positive")
        self.num_classes = num_classes
        self.subcenters = subcenters
        self.embedding_size = embedding_size
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def unit_subcenters(self, device: torch.device | None = None) -> torch.Tensor:
        """The L2-normalised sub-centers, shaped (C, K, D), made on ``device`` (the weight's own by default): a
        head memory-mapped from model.pt is copied once, straight to where it is used, never whole into host
        memory on its way to a GPU."""
        weight = self.weight.detach().to(device) if device is not None else self.weight.detach()
        return F.normalize(weight.float(), dim=1).view(self.num_classes, self.subcenters, -1)

    def class_cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(x, class j) = max_k cos(x, W[j, k]), shaped (N, C)."""
        return class_cosines(embeddings, self.weight, self.subcenters)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float | None = None) -> HeadOutput:
        class_cosine = self.class_cosines(embeddings).float()
        logits = margin_logits(class_cosine, labels, self.scale, self.margin if margin is None else margin)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            target = class_cosine.gather(1, labels[:, None]).squeeze(1)
            correct = class_cosine.argmax(dim=1) == labels
        return HeadOutput(loss=loss, target_cosine=target, correct=correct)
