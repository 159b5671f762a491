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


def _resolved(path: str | os.PathLike) -> Path:
    """The real location of ``path`` (``~``, ``./``, ``..`` and symlinks resolved)."""
    return Path(path).expanduser().resolve()


def check_output_dir_reads_nothing(output_dir: str | os.PathLike, sources: dict[str, Any]) -> None:
    """Refuse an ``output_dir`` that is, contains or lies inside a local folder a model is read from.

    ``sources`` maps a flag (``--teacher_model_name_or_path``) to its value(s); values that are no
    local path (Hub ids, shipped config names) are skipped; a file (a config.json) counts as its folder,
    which output_dir may then contain but not be or lie in. Paths are
    compared resolved, so a symlink or a ``./`` spelling of the same folder is the same folder: a run
    never writes (nor, with --overwrite_output_dir, removes anything) where it reads a model from,
    whatever the other flags say.
    """
    out = _resolved(output_dir)
    for flag, values in sources.items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if not value or not Path(value).expanduser().exists():
                continue
            source = _resolved(value)
            folder = source if source.is_dir() else source.parent
            if out == folder or folder in out.parents:
                where = "is" if out == folder else "is inside"
            elif out in folder.parents and source.is_dir():  # a model folder under output_dir
                where = "contains"
            else:
                continue
            raise ValueError(
                f"--output_dir {str(output_dir)!r} {where} the folder {flag} {str(value)!r} reads a model from "
                f"({folder}); a run never writes where it reads a model: pass another --output_dir."
            )
