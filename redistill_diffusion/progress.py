"""One-line progress notes for phases that run without a step bar (so no minute passes silently).

Written to stderr and flushed, like tqdm's bars, so lines and bars appear in the order they happen
whatever the logging level (training scripts log at WARNING).
"""

from __future__ import annotations

import sys


def announce(message: str) -> None:
    """Print one line saying what runs now."""
    print(message, file=sys.stderr, flush=True)
