"""Helpers shared by the test modules: the CLI run in-process, its exit-code checks, the bit-for-bit comparison of
two runs' models, and an independent struct-level RecordIO reader (written from the format description, not from
facecleaner's reader)."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import torch
from click.testing import CliRunner, Result

from facecleaner.cli import main

LOGGER = logging.getLogger("facecleaner")
MAGIC = 0xCED7230A  # dmlc RecordIO, from the format description


def invoke(*args: object) -> Result:
    """Run the CLI in-process with its own stderr: the CLI's log handler is removed again afterwards."""
    saved_handlers, saved_level = LOGGER.handlers[:], LOGGER.level
    LOGGER.handlers = [h for h in saved_handlers if not getattr(h, "_facecleaner_cli", False)]
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        LOGGER.handlers, LOGGER.level = saved_handlers, saved_level


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)


def assert_error(result: Result, *fragments: str) -> str:
    """Exit 1 with exactly one ``Error: <what> — <fix>`` line on stderr, nothing on stdout, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and " — " in lines[0], result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def assert_same_weights(expected: Path, actual: Path) -> None:
    """The two runs' model.pt hold the same backbone and head, bit for bit."""
    one = torch.load(expected / "model.pt", weights_only=True)
    two = torch.load(actual / "model.pt", weights_only=True)
    for part in ("backbone", "head"):
        assert one[part].keys() == two[part].keys()
        for name, value in one[part].items():
            assert torch.equal(value, two[part][name]), (part, name)


def read_records(rec: Path, idx: Path) -> dict[int, tuple[int, tuple[float, ...], float, bytes]]:
    """key → (flag, extra labels, header label, image bytes), following train.idx; no continuation parts here."""
    data = rec.read_bytes()
    records = {}
    for line in idx.read_text().splitlines():
        key, offset = (int(v) for v in line.split("\t"))
        magic, lrecord = struct.unpack_from("<II", data, offset)
        assert magic == MAGIC and lrecord >> 29 == 0
        payload = data[offset + 8:offset + 8 + (lrecord & ((1 << 29) - 1))]
        flag, label, _, _ = struct.unpack_from("<IfQQ", payload)
        extra = struct.unpack_from(f"<{flag}f", payload, 24)
        records[key] = (flag, extra, label, payload[24 + 4 * flag:])
    return records


def check_insightface_layout(dest: Path) -> tuple[list[int], list[bytes]]:
    """Key 0 announces the identity records; their ranges tile 1..N with one label each; returns labels, images."""
    records = read_records(dest / "train.rec", dest / "train.idx")
    flag, (first_identity, end_identity), _, _ = records[0]
    assert flag == 2
    n = int(first_identity) - 1
    labels = [int(records[key][2]) for key in range(1, n + 1)]
    images = [records[key][3] for key in range(1, n + 1)]
    assert all(records[key][0] == 0 for key in range(1, n + 1))
    start = 1
    for key in range(int(first_identity), int(end_identity)):
        identity_flag, (first, end), _, _ = records[key]
        assert identity_flag == 2 and int(first) == start and int(end) > start
        assert len({labels[k - 1] for k in range(int(first), int(end))}) == 1
        start = int(end)
    assert start == n + 1 and len(records) == n + 1 + (int(end_identity) - int(first_identity))
    assert labels == sorted(labels)
    return labels, images
