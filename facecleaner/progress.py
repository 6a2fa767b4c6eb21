"""Progress bars and logs on stderr: bars only when stderr is a terminal, so pipes and CI stay clean."""

from __future__ import annotations

import logging
import sys
from typing import Any

from tqdm import tqdm

logger = logging.getLogger("facecleaner")


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "img", **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that disables itself when ``enabled`` is False or stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, dynamic_ncols=True,
                leave=False, disable=not enabled or not sys.stderr.isatty(), **kwargs)
