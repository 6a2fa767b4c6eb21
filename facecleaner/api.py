"""The public API: each CLI subcommand's whole job as a function.

Every function validates its inputs before heavy work, raises :class:`facecleaner.errors.FaceCleanerError`
for anything the user can fix, and returns a JSON-ready summary. Each job's orchestration lives in its own
module under :mod:`facecleaner.jobs` (export's under :mod:`facecleaner.exports`); this is their table, each
module imported on first use: ``prune`` and ``export`` never pay for importing torch (1.7 s on two cores).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Entry point → (module, name in it).
ENTRY_POINTS = {
    "train": ("facecleaner.jobs.train", "train"),
    "score": ("facecleaner.jobs.score", "score"),
    "prune": ("facecleaner.jobs.prune", "prune"),
    "report": ("facecleaner.jobs.report", "report"),
    "export": ("facecleaner.exports", "export_manifest"),
    "export_model": ("facecleaner.jobs.export_model", "export_model"),
    "evaluate": ("facecleaner.jobs.evaluate", "evaluate"),
    "demo": ("facecleaner.jobs.demo", "demo"),
    "DEFAULT_ANGLE": ("facecleaner.pruning.rules", "DEFAULT_ANGLE"),
}

__all__ = sorted(ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    if name not in ENTRY_POINTS:
        raise AttributeError(f"module 'facecleaner.api' has no attribute {name!r}")
    module, attribute = ENTRY_POINTS[name]
    return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
    return __all__
