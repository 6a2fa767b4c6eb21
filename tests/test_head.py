"""The sub-center ArcFace loss against an independent float64 formula, and its edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from facecleaner.model.head import SubCenterArcFace, margin_logits


def reference_loss(x: np.ndarray, w: np.ndarray, y: np.ndarray, scale: float, margin: float) -> float:
    """Mean cross-entropy of s·cos θ_j (j≠y) and s·cos(θ_y+m), in float64, straight from the paper."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=2, keepdims=True)
    cos = np.einsum("nd,ckd->nck", x, w).max(axis=2)
    losses = []
    for i, label in enumerate(y):
        theta = math.acos(np.clip(cos[i, label], -1, 1))
        if theta + margin <= math.pi:
            target = math.cos(theta + margin)
        else:  # the reference implementations' monotonic fallback
            target = math.cos(theta) - margin * math.sin(math.pi - margin)
        logits = scale * cos[i].copy()
        logits[label] = scale * target
        top = logits.max()
        losses.append(-(logits[label] - top - math.log(np.exp(logits - top).sum())))
    return float(np.mean(losses))


@pytest.mark.parametrize("subcenters", [1, 3])
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_loss_matches_float64_reference(subcenters: int, margin: float) -> None:
    rng = np.random.default_rng(subcenters * 10 + int(margin * 10))
    classes, dim, n = 7, 16, 40
    head = SubCenterArcFace(classes, subcenters, dim, scale=30.0, margin=margin)
    weights = rng.normal(size=(classes, subcenters, dim))
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weights.reshape(-1, dim)))
    x = rng.normal(size=(n, dim))
    # Put a few samples on the far side of their class so θ_y + m > π is exercised too.
    y = rng.integers(0, classes, size=n)
    x[:5] = -weights[y[:5], 0] * 3
    out = head(torch.from_numpy(x).float(), torch.from_numpy(y))
    assert out.loss.item() == pytest.approx(reference_loss(x, weights, y, 30.0, margin), rel=1e-5, abs=1e-5)


def test_one_subcenter_is_plain_arcface_and_identical_subcenters_change_nothing() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(5, 8))
    x = torch.from_numpy(rng.normal(size=(12, 8))).float()
    y = torch.from_numpy(rng.integers(0, 5, size=12))
    single = SubCenterArcFace(5, 1, 8, scale=64.0, margin=0.5)
    triple = SubCenterArcFace(5, 3, 8, scale=64.0, margin=0.5)
    with torch.no_grad():
        single.weight.copy_(torch.from_numpy(centers))
        triple.weight.copy_(torch.from_numpy(np.repeat(centers, 3, axis=0)))
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(torch.from_numpy(centers).float()).T
    theta = torch.arccos(cos.gather(1, y[:, None]).clamp(-1, 1))
    logits = cos.clone()
    logits.scatter_(1, y[:, None], torch.cos(theta + 0.5))
    arcface = torch.nn.functional.cross_entropy(64.0 * logits, y)
    assert single(x, y).loss.item() == pytest.approx(arcface.item(), rel=1e-4)
    assert triple(x, y).loss.item() == pytest.approx(single(x, y).loss.item(), rel=1e-6)


def test_target_logit_is_monotonic_past_pi_minus_margin() -> None:
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    cosine = torch.stack([torch.cos(theta), torch.zeros_like(theta)], dim=1)
    labels = torch.zeros(len(theta), dtype=torch.long)
    target = margin_logits(cosine, labels, scale=1.0, margin=0.5)[:, 0]
    assert torch.all(target[1:] <= target[:-1] + 1e-6), "target logit must not rise as θ grows"
    beyond = theta > math.pi - 0.5
    expected = torch.cos(theta[beyond]) - 0.5 * math.sin(math.pi - 0.5)
    assert torch.allclose(target[beyond].double(), expected, atol=1e-5)
    within = ~beyond
    assert torch.allclose(target[within].double(), torch.cos(theta[within] + 0.5), atol=1e-3)
    # sin θ is floored at 1e-3 (bounded gradients at cos = 1); past that floor the value is exact.
    exact = within & (theta > 0.01)
    assert torch.allclose(target[exact].double(), torch.cos(theta[exact] + 0.5), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_no_nan_under_autocast_with_cosines_at_plus_minus_one(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    head = SubCenterArcFace(4, 3, 32, scale=64.0, margin=0.5)
    w = head.weight.detach()
    # Embeddings exactly on a sub-center (cos = 1) and exactly opposite one (cos = -1).
    x = torch.cat([w[0:1] * 5, -w[3:4] * 2, w[6:7], -w[9:10]]).clone().requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3])
    linear = torch.nn.Linear(32, 32)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(32))
        linear.bias.zero_()
    try:
        with torch.autocast("cpu", dtype=dtype):
            embeddings = linear(x)
    except RuntimeError as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"CPU autocast does not support {dtype}: {exc}")
    out = head(embeddings, y)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(head.weight.grad).all()
    assert torch.isfinite(linear.weight.grad).all()


def test_bf16_loss_close_to_fp32() -> None:
    torch.manual_seed(3)
    head = SubCenterArcFace(50, 3, 64, scale=64.0, margin=0.5)
    backbone = torch.nn.Linear(128, 64)
    x = torch.randn(32, 128)
    y = torch.randint(0, 50, (32,))
    full = head(backbone(x), y).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = head(backbone(x).float(), y).loss.item()
    assert half == pytest.approx(full, rel=1e-2)


def test_accuracy_and_target_cosine_reported() -> None:
    head = SubCenterArcFace(3, 2, 3, scale=10.0, margin=0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 0], [-1, 0, 0], [-1, 0, 0.]]))
    x = torch.tensor([[0.0, 0, 1], [1.0, 0, 0]])
    out = head(x, torch.tensor([0, 1]))
    assert out.correct.tolist() == [True, False]
    assert out.target_cosine.tolist() == pytest.approx([1.0, 0.0])
