"""The files one prune writes (clean, dropped, classes) know each other: each records the run id they share,
its own row count and the companions' paths and row counts. A reader calls :func:`check_companions` to tell
a matching set from a mixed one (an interrupted or partial prune left files of two runs side by side).

A file whose actual row count differs from the ``rows`` it records was edited (filtered with pyarrow, say):
that is the user's right, and its row-level metadata (the companions) then says nothing about it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facecleaner.errors import InputError
from facecleaner.manifests.io import parquet_info

ROLES = ("clean", "dropped", "classes")


def companion_fields(paths: dict[str, Path], rows: dict[str, int], run_id: str, role: str) -> dict[str, Any]:
    """The metadata fields that tie the file of ``role`` to the others of its run; each companion's path is
    relative to that file's folder, so the set can be moved together."""
    own = Path(os.path.abspath(paths[role])).parent
    return {"run_id": run_id, "rows": rows[role],
            "companions": {name: {"path": os.path.relpath(os.path.abspath(path), own), "rows": rows[name]}
                           for name, path in paths.items()}}


@dataclass
class CompanionReport:
    """What :func:`check_companions` found: ``edited`` when the file's rows are not those its metadata records
    (its companions were then not checked), ``matched`` companions of the same run, ``mixed`` ones of another."""

    path: Path
    edited: bool = False
    matched: int = 0
    mixed: list[Path] = field(default_factory=list)

    def warning(self) -> str | None:
        """A plain-words warning naming the files that do not belong together, or None."""
        if not self.mixed:
            return None
        others = " and ".join(str(p) for p in self.mixed)
        return (f"{self.path} and {others} come from different prune runs (a prune was interrupted, or a file "
                "was copied in from another run), so they do not split one scores file between them: rerun prune "
                "to write a matching set")


def check_companions(path: Path) -> CompanionReport:
    """Compare a manifest with the companions its metadata names. Missing companions, and ones that no longer
    carry our metadata, are the user's business and not reported."""
    path = Path(path)
    meta, _, rows = parquet_info(path)
    report = CompanionReport(path)
    if meta is None or (isinstance(meta.get("rows"), int) and meta["rows"] != rows):
        report.edited = True
        return report
    companions = meta.get("companions")
    if not isinstance(companions, dict):
        return report
    folder = Path(os.path.realpath(path)).parent  # companion paths are relative to the file, not to a link to it
    for entry in companions.values():
        other = folder / str(entry.get("path", "")) if isinstance(entry, dict) else None
        if other is None or not other.is_file() or os.path.samefile(other, path):
            continue
        try:
            their, _, _ = parquet_info(other)
        except InputError:
            continue
        if their is None:
            continue
        if their.get("run_id") == meta.get("run_id"):
            report.matched += 1
        else:
            report.mixed.append(other)
    return report
