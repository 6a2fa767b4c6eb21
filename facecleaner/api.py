"""The public API: each CLI subcommand's whole job as a function.

Every function validates its inputs before heavy work, raises :class:`facecleaner.errors.FaceCleanerError`
for anything the user can fix, and returns a JSON-ready summary. Each job's orchestration lives in its own
module under :mod:`facecleaner.jobs` (export's under :mod:`facecleaner.exports`); this is their table.
"""

from __future__ import annotations

from facecleaner.exports import export_manifest as export
from facecleaner.jobs.demo import demo
from facecleaner.jobs.evaluate import evaluate
from facecleaner.jobs.export_model import export_model
from facecleaner.jobs.prune import DEFAULT_ANGLE, prune
from facecleaner.jobs.report import report
from facecleaner.jobs.score import score
from facecleaner.jobs.train import train

__all__ = ["DEFAULT_ANGLE", "demo", "evaluate", "export", "export_model", "prune", "report", "score", "train"]
