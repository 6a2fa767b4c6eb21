"""One error hierarchy: every failure the user can fix is a FaceCleanerError.

The CLI prints ``Error: <what> — <how to fix>`` and exits 1; library callers catch the class.
"""

from __future__ import annotations


class FaceCleanerError(Exception):
    """A problem the user can fix; ``what`` says what went wrong and ``fix`` how to fix it."""

    def __init__(self, what: str, fix: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}" if self.fix else self.what


class InputError(FaceCleanerError):
    """The dataset, manifest or option given cannot be used as it is."""


class RecordIOError(InputError):
    """A RecordIO ``.rec``/``.idx`` pair is truncated, garbled or inconsistent."""


class CheckpointError(FaceCleanerError):
    """A run directory or checkpoint is missing, foreign or does not match the data."""


class TooManyBadSamples(FaceCleanerError):
    """More samples were unreadable than ``--max-bad-fraction`` allows."""


class PruneRefused(FaceCleanerError):
    """The rule would drop more than ``--max-drop-fraction`` of the samples."""


class Interrupted(FaceCleanerError):
    """Ctrl-C or SIGTERM stopped a long run; what it had done is kept where the message says, to resume from."""
