"""Untrusted labels and file names → single, safe path components, never two labels in one folder.

A web-collected label such as ``../../x``, ``a/b``, ``C:x``, ``..``, ``""`` or one holding NUL must never
write outside the export folder. :func:`safe_component` makes any text one plain path component on POSIX and
Windows alike; :func:`label_folders` maps every distinct label to a distinct folder (distinct even on
case-insensitive or normalising filesystems), keeping safe labels unchanged and giving every changed one a
short hash of the original so that two labels never merge.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

#: Path separators, NUL and control characters, and what Windows forbids in names (``:`` covers ``C:``).
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
#: Windows strips trailing dots and spaces, so ``a.`` and ``a`` would be one folder there.
_TRAILING = re.compile(r"[. ]+$")
#: A leading dot hides a name from ``ls`` and from glob-based loaders (``glob("DEST/*/*")`` skips it).
_LEADING = re.compile(r"^\.+")
_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                      *(f"LPT{i}" for i in range(1, 10))})
#: Most filesystems allow 255 bytes per name; leave room for the hash and de-duplication suffixes.
MAX_NAME_BYTES = 200


def safe_component(text: str) -> str:
    """``text`` as one path component: unsafe characters become ``_``, reserved names get a ``_`` prefix.

    The result is never empty, ``.`` or ``..``, never hidden (no leading dot), never ends in a dot or space,
    holds no separator, NUL, control character or drive prefix, is no Windows device name, and is at most
    :data:`MAX_NAME_BYTES` bytes of UTF-8; a safe name comes back unchanged.
    """
    name = _UNSAFE.sub("_", text)
    name = _LEADING.sub(lambda match: "_" * len(match.group()), name)
    name = _TRAILING.sub(lambda match: "_" * len(match.group()), name)
    if not name:
        name = "_"
    if name.split(".")[0].upper() in _DEVICES:
        name = "_" + name
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_NAME_BYTES:
        name = encoded[:MAX_NAME_BYTES].decode("utf-8", "ignore")
        name = _TRAILING.sub(lambda match: "_" * len(match.group()), name)
    return name


def name_key(name: str) -> str:
    """Names that one filesystem or another treats as the same (case, Unicode normalisation) share a key."""
    return unicodedata.normalize("NFC", name).casefold()


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def label_folders(labels: Iterable[Any]) -> dict[Any, str]:
    """Distinct labels → distinct folder names.

    Integer labels become zero-padded decimals of one width (``007``), so that sorting the folders by name
    (as torchvision's ``ImageFolder`` does to number its classes) gives the labels' numeric order. Text labels
    that are already safe keep their name; a label changed by :func:`safe_component`, or one whose name
    differs only in case or normalisation from another's, gets ``__<sha256 prefix of the label>``.
    """
    distinct = sorted(set(labels), key=lambda value: (not isinstance(value, int), value))
    if distinct and all(isinstance(value, int) for value in distinct):
        width = max(len(str(abs(value))) for value in distinct)
        return {value: f"{value:0{width}d}" for value in distinct}
    texts = {value: str(value) for value in distinct}
    folders: dict[Any, str] = {}
    used: set[str] = set()
    later = []
    for value in distinct:  # safe labels claim their own names first
        name = safe_component(texts[value])
        if name == texts[value] and name_key(name) not in used:
            folders[value] = name
            used.add(name_key(name))
        else:
            later.append((value, name))
    for value, base in later:
        name = candidate = f"{base}__{short_hash(texts[value])}"
        number = 2
        while name_key(name) in used:
            name = f"{candidate}_{number}"
            number += 1
        folders[value] = name
        used.add(name_key(name))
    return folders


def safe_file_name(wanted: str) -> str:
    """:func:`safe_component` that keeps a short extension when a long name has to be cut."""
    stem, ext = os.path.splitext(wanted)
    if len(wanted.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES or not 1 < len(ext) <= 16:
        return safe_component(wanted)
    ext = _TRAILING.sub(lambda match: "_" * len(match.group()), _UNSAFE.sub("_", ext))
    room = MAX_NAME_BYTES - len(ext.encode("utf-8", "surrogatepass"))
    return safe_component(stem.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")) + ext


class FileNamer:
    """Per folder, file names that never collide (``name.jpg``, ``name__2.jpg``, ...)."""

    def __init__(self) -> None:
        self._used: dict[str, set[str]] = {}

    def pick(self, folder: str, wanted: str) -> str:
        """A free name in ``folder`` for a file called ``wanted`` (any text; made safe here); not yet taken."""
        name = safe_file_name(wanted)
        used = self._used.get(folder, set())
        if name_key(name) not in used:
            return name
        stem, ext = os.path.splitext(name)
        number = 2
        while name_key(f"{stem}__{number}{ext}") in used:
            number += 1
        return f"{stem}__{number}{ext}"

    def take(self, folder: str, name: str) -> None:
        """Mark ``name`` used in ``folder`` (call once the file is in place)."""
        self._used.setdefault(folder, set()).add(name_key(name))
