"""facecleaner: clean noisy face-recognition datasets with Sub-center ArcFace.

The API mirrors the command line: ``facecleaner.train``, ``score``, ``prune``, ``report``, ``export``,
``export_model``, ``evaluate`` (the ``eval`` command) and ``demo``. They are loaded on first use, so ``import
facecleaner`` stays cheap (no torch import until a command needs it).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("train", "score", "prune", "report", "export", "export_model", "evaluate", "demo")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from facecleaner import api

        return getattr(api, name)
    raise AttributeError(f"module 'facecleaner' has no attribute {name!r}")
