"""Open any DATA argument (identity folders, Parquet/CSV manifest, RecordIO) as a :class:`Source`."""

from __future__ import annotations

from pathlib import Path

from facecleaner.errors import InputError
from facecleaner.sources.base import Source, table_fingerprint
from facecleaner.sources.images import UnreadableImage, decode_image

__all__ = ["Source", "UnreadableImage", "decode_image", "open_source", "source_root", "table_fingerprint"]


def source_root(source: Source) -> str | None:
    """Where a source's relative paths (or its records) live; manifests record it so later steps find images."""
    root = getattr(source, "root", None) or getattr(source, "rec_path", None)
    return str(Path(root).resolve()) if root else None


def open_source(data: str | Path) -> Source:
    """Pick the reader from what ``data`` is: a ``.rec`` file or a folder holding one, a manifest, or folders."""
    path = Path(data)
    if not path.exists():
        raise InputError(f"dataset {path} does not exist",
                         "give a folder of identity folders, a .parquet/.csv manifest or a train.rec")
    if path.is_dir():
        if (path / "train.rec").is_file():
            from facecleaner.sources.recordio import open_recordio

            return open_recordio(path / "train.rec")
        from facecleaner.sources.files import open_identity_folders

        return open_identity_folders(path)
    suffix = path.suffix.lower()
    if suffix == ".rec":
        from facecleaner.sources.recordio import open_recordio

        return open_recordio(path)
    if suffix in (".parquet", ".csv"):
        from facecleaner.sources.files import open_manifest

        return open_manifest(path)
    raise InputError(f"cannot tell what kind of dataset {path} is",
                     "give a folder of identity folders, a .parquet or .csv manifest, or a train.rec")
