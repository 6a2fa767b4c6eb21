"""Learning-rate and margin schedules as pure functions of the step, so resume needs only the step count."""

from __future__ import annotations


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from ~0 to 1, then polynomial (power 2) decay to 0, as insightface's PolyScheduler."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(total_steps - warmup_steps, 1)
    return max(0.0, 1.0 - (step - warmup_steps) / remaining) ** 2


def margin_at(step: int, warmup_steps: int, margin: float) -> float:
    """The angular margin ramps linearly from 0 to ``margin``: from-scratch training converges first."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return margin
    return margin * step / warmup_steps
