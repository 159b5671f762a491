"""Reading the user's files and preparing where outputs go, with one-line errors that name the path.

Every entry point (the `redistill` CLI, the example scripts, the API) reads configs and creates
output folders through these helpers, so a bad file or an unwritable path is reported the same way
everywhere, before any work starts: which path, what is wrong with it, and nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json(path: str | os.PathLike) -> Any:
    """``json.load`` whose errors name the file (a bare "Expecting property name" does not)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}).") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 text).") from None


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is a file, if any."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def ensure_output_dir(path: str | os.PathLike, flag: str = "--output_dir") -> Path:
    """Create the folder ``path`` (and its parents) or say in one line why it cannot be."""
    folder = Path(path).expanduser()
    blocking = _blocking_file(folder.absolute())
    if blocking is not None:
        where = (
            "is a file" if blocking == folder.absolute() else f"is inside {str(blocking)!r}, which is a file"
        )
        raise ValueError(f"{flag} {str(path)!r} {where}; pass a folder.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{flag} {str(path)!r} cannot be created: {error.strerror}.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {str(path)!r} is not writable.")
    return folder


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Make sure the file ``path`` can be written later (its folder is created now)."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; pass a file name.")
    ensure_output_dir(file.parent, flag=f"{flag} {str(path)!r}: its folder")
    return file
