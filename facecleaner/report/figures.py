"""The report's figures, one function each: draw a PNG with matplotlib (Agg, no pyplot state) and return the
numbers it plotted, which ``summary.json`` records as they are, so the page and the JSON never disagree.

Thresholds are marked the same way in every figure: the paper's 75°, the threshold ``--angle auto`` reads from
the angles (when they show a noise mode) and the one the report's kept/dropped split was taken at, when it is
neither.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facecleaner.scoring.health import (
    MAX_MEMORISED_SHARE,
    MAX_UNSEPARATED_SHARE,
    MEMORISED_ANGLE,
    MIN_MEDIAN_GAP,
    SEPARATED_MEDIAN,
    UNSEPARATED_ANGLE,
)

#: Degrees per bar of the angle histogram.
ANGLE_BIN = 2.0
#: The thresholds the kept-share curve is drawn over, in degrees (inclusive), 1° apart.
CURVE_RANGE = (30, 120)
DROP_RATE_BINS = 20
DPI = 120
SIZE = (6.4, 3.5)
COLOURS = {"dominant": "#2b6cb0", "non_dominant": "#dd6b20", "kept": "#2f855a", "dropped": "#c53030",
           "paper": "#4a5568", "auto": "#805ad5", "used": "#1a202c", "ok": "#38a169", "warn": "#dd6b20"}


def marks(threshold: float, auto_angle: float | None, paper: float = 75.0) -> list[dict[str, Any]]:
    """The threshold lines to draw: the paper's, auto's (None when the angles show no noise mode) and the one
    used, each once (a line that coincides with another is named by both)."""
    found: list[dict[str, Any]] = [{"name": "paper", "label": f"paper {paper:g}°", "angle": float(paper)}]
    if auto_angle is not None:
        found.append({"name": "auto", "label": f"auto {auto_angle:.1f}°", "angle": float(auto_angle)})
    if all(not math.isclose(m["angle"], threshold) for m in found):
        found.append({"name": "used", "label": f"used {threshold:g}°", "angle": float(threshold)})
    return found


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = SIZE, **kwargs: Any) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    return figure, figure.subplots(rows, cols, **kwargs)


def _draw_marks(axes: Any, found: Sequence[dict[str, Any]], notes: dict[str, str] | None = None) -> None:
    styles = {"paper": "--", "auto": ":", "used": "-"}
    for mark in found:
        note = (notes or {}).get(mark["name"])
        axes.axvline(mark["angle"], color=COLOURS[mark["name"]], linestyle=styles[mark["name"]], linewidth=1.4,
                     label=mark["label"] + (f": {note}" if note else ""))


def _save(figure: Any, path: Path) -> None:
    figure.savefig(path, format="png", dpi=DPI)


def angle_histogram(angle: np.ndarray, readable: np.ndarray, is_dominant: np.ndarray,
                    found: Sequence[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Angles to the dominant sub-center of the readable samples, those nearest the dominant sub-center apart
    from those nearest another (the paper's analysis: noise gathers in the non-dominant sub-centers)."""
    finite = readable & np.isfinite(angle)
    dominant = angle[finite & is_dominant].astype(np.float64)
    other = angle[finite & ~is_dominant].astype(np.float64)
    edges = np.arange(0.0, 180.0 + ANGLE_BIN, ANGLE_BIN)
    counts = {"dominant": np.histogram(dominant, edges)[0], "non_dominant": np.histogram(other, edges)[0]}
    figure, axes = _figure()
    for name, values, label in (("dominant", dominant, "nearest the dominant sub-center"),
                                ("non_dominant", other, "nearest a non-dominant sub-center")):
        if len(values):  # one patch per series, not one per bar: fast at any number of bins
            axes.stairs(counts[name], edges, fill=True, color=COLOURS[name], alpha=0.55,
                        label=f"{label} ({len(values):,})")
    _draw_marks(axes, found)
    top = float(np.max(angle[finite])) if finite.any() else 90.0
    axes.set_xlim(0, min(180.0, max(120.0, math.ceil(top / 10.0) * 10.0 + 10.0)))
    axes.set_xlabel("angle to the class's dominant sub-center (degrees)")
    axes.set_ylabel("samples")
    axes.set_title("Angles: dominant vs non-dominant samples", fontsize=11)
    figure.legend(loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    _save(figure, path)
    over = {m["name"]: {"angle": m["angle"], "dominant_over": int((dominant > m["angle"]).sum()),
                        "non_dominant_over": int((other > m["angle"]).sum())} for m in found}
    return {"file": path.name, "bin_edges": edges.tolist(), "dominant": counts["dominant"].tolist(),
            "non_dominant": counts["non_dominant"].tolist(), "dominant_samples": len(dominant),
            "non_dominant_samples": len(other), "over": over}


def kept_share(angle: np.ndarray, readable: np.ndarray, found: Sequence[dict[str, Any]], path: Path,
               run: tuple[float, float] | None = None) -> dict[str, Any]:
    """The share of all samples the paper rule keeps at each threshold from 30° to 120°: readable with an angle
    at most the threshold (unreadable samples count as dropped). ``run`` is (threshold, share kept) of the
    report's own split — a clean manifest's rule may drop more — drawn as a point."""
    values = np.sort(angle[readable & np.isfinite(angle)].astype(np.float64))
    total = max(len(angle), 1)
    thresholds = np.arange(CURVE_RANGE[0], CURVE_RANGE[1] + 1, dtype=np.float64)
    shares = np.searchsorted(values, thresholds, side="right") / total
    figure, axes = _figure()
    axes.plot(thresholds, shares, color=COLOURS["kept"], linewidth=2, label="kept by the angle rule")
    at = {m["name"]: {"angle": m["angle"], "share": float(np.searchsorted(values, m["angle"], side="right") / total)}
          for m in found}
    _draw_marks(axes, found, {name: f"keeps {entry['share']:.1%}" for name, entry in at.items()})
    if run is not None:
        at["run"] = {"angle": float(run[0]), "share": float(run[1])}
        if CURVE_RANGE[0] <= run[0] <= CURVE_RANGE[1]:
            axes.plot([run[0]], [run[1]], "o", color=COLOURS["used"], markersize=5,
                      label=f"this run: {run[1]:.1%} at {run[0]:g}°")
    axes.set_xlim(*CURVE_RANGE)
    low = float(shares.min()) if len(shares) else 0.0
    axes.set_ylim(max(0.0, math.floor(low * 10) / 10 - 0.05), 1.01)
    axes.yaxis.set_major_formatter(_percent())
    axes.set_xlabel("threshold (degrees)")
    axes.set_ylabel("share of samples kept")
    axes.set_title("Share kept against the threshold", fontsize=11)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    _save(figure, path)
    return {"file": path.name, "thresholds": thresholds.tolist(), "share": shares.tolist(), "samples": len(angle),
            "at": at}


def drop_rates(samples: np.ndarray, dropped: np.ndarray, path: Path) -> dict[str, Any]:
    """How the drops spread over identities: a histogram of each class's dropped share. Drops spread thin
    over many classes look like noise; a few classes losing most of their images deserve a look."""
    rate = dropped / np.maximum(samples, 1)
    edges = np.linspace(0.0, 1.0, DROP_RATE_BINS + 1)
    counts = np.histogram(rate, edges)[0]
    figure, axes = _figure()
    bars = axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color=COLOURS["dropped"], alpha=0.75,
                    edgecolor="white")
    axes.bar_label(bars, labels=[f"{c:,}" if c else "" for c in counts], fontsize=7, padding=1)
    # A log scale (linear below 1) keeps the few identities losing most visible beside the many losing none.
    axes.set_yscale("symlog", linthresh=1)
    axes.set_ylim(0, max(float(counts.max(initial=1)), 1.0) * 4)
    axes.yaxis.set_major_formatter(_integers())
    axes.xaxis.set_major_formatter(_percent())
    axes.set_xlim(0, 1)
    axes.set_xlabel("share of the identity's samples dropped")
    axes.set_ylabel("identities")
    axes.set_title(f"Drop rate per identity ({len(rate):,} identities)", fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)
    return {"file": path.name, "bin_edges": edges.tolist(), "counts": counts.tolist(), "classes": len(rate),
            "median": float(np.median(rate)) if len(rate) else None,
            "mean": float(np.mean(rate)) if len(rate) else None,
            "none_dropped": int((dropped == 0).sum()), "all_dropped": int(((dropped == samples) & (samples > 0)).sum()),
            "over_half": int((rate > 0.5).sum())}


def health_panel(health: dict[str, Any], path: Path) -> dict[str, Any]:
    """The model-health measures (:mod:`facecleaner.scoring.health`), each against the limit past which score
    warns: median angle, share memorised (< 5°), share not separated (> 90°), median gap to the nearest other
    class."""
    rows = [
        ("median_angle", "median angle", health.get("median_angle"), (0.0, 180.0), SEPARATED_MEDIAN, "above",
         "°"),
        ("memorised_share", f"memorised (< {MEMORISED_ANGLE:g}°)", health.get("memorised_share"), (0.0, 1.0),
         MAX_MEMORISED_SHARE, "above", "%"),
        ("unseparated_share", f"not separated (> {UNSEPARATED_ANGLE:g}°)", health.get("unseparated_share"),
         (0.0, 1.0), MAX_UNSEPARATED_SHARE, "above", "%"),
        ("median_gap", "median gap to other class", health.get("median_gap"), (-30.0, 90.0), MIN_MEDIAN_GAP,
         "below", "°"),
    ]
    figure, axes = _figure(len(rows), 1, size=(SIZE[0], SIZE[1]))
    measures = {}
    for ax, (key, label, value, span, limit, bad_side, unit) in zip(axes, rows, strict=True):
        number = value if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
            else None
        warn = number is not None and (number > limit if bad_side == "above" else number < limit)
        if key == "median_gap" and number is not None and number <= 0:
            warn = True
        measures[key] = {"value": number, "limit": limit, "warns": bool(warn),
                         "warns_when": f"{bad_side} {limit:g}"}
        ax.set_xlim(*span)
        ax.set_yticks([0])
        ax.set_yticklabels([label], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        if number is not None:
            start = max(span[0], 0.0) if span[0] < 0 else span[0]
            ax.barh([0], [min(max(number, span[0]), span[1]) - start], left=start, height=0.6,
                    color=COLOURS["warn" if warn else "ok"])
            text = f"{number:.0%}" if unit == "%" else f"{number:.1f}°"
        else:
            text = "n/a"
        ax.axvline(limit, color=COLOURS["used"], linestyle="--", linewidth=1)
        ax.text(1.0, 0.5, f"  {text}", transform=ax.transAxes, va="center", ha="left", fontsize=9,
                fontweight="bold", color=COLOURS["warn" if warn else "used"])
        if unit == "%":
            ax.xaxis.set_major_formatter(_percent())
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    axes[0].set_title("Model health (dashed: where score warns)", fontsize=11)
    _save(figure, path)
    return {"file": path.name, "measures": measures, "warnings": [w for w in health.get("warnings", [])
                                                                  if isinstance(w, str)],
            "separated": health.get("separated")}


def _integers() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:,.0f}")


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)
