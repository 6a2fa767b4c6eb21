"""The ROC figure of a verification run, as a PNG (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facecleaner.fileio import atomic_output
from facecleaner.verification.metrics import Roc


def save_roc(path: Path, roc: Roc, title: str, marks: dict[str, float | None]) -> None:
    """TPR against FPR on a log FPR axis (from one mismatched pair's share to 1), with ``marks`` (FPR key → TPR)
    drawn as points; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: the global backend stays as it is
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positive = roc.fpr > 0
    smallest = float(roc.fpr[positive].min()) if positive.any() else 1.0
    # A step curve: from each point the TPR holds until the next FPR.
    fpr = np.r_[smallest / 2, roc.fpr[positive]]
    tpr = np.r_[roc.tpr[~positive].max(), roc.tpr[positive]]
    axes.step(fpr, tpr, where="post", color="tab:blue", label=f"ROC (AUC {roc.auc:.4f})")
    for key, value in marks.items():
        if value is not None:
            axes.plot([float(key)], [value], "o", label=f"TPR@FPR={key}: {value:.4f}")
    axes.set_xscale("log")
    axes.set_xlim(smallest / 2, 1.0)
    axes.set_ylim(0.0, 1.01)
    axes.set_xlabel("false positive rate (mismatched pairs accepted)")
    axes.set_ylabel("true positive rate (matched pairs accepted)")
    axes.set_title(title, fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png")
