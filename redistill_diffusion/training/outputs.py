"""One run per output folder, and a record of what each run wrote there.

Two runs started at once into one ``--output_dir`` would both pass the emptiness check and then
delete each other's temporary checkpoints. The main process therefore holds an exclusive lock
(`filelock`, an OS lock that dies with the process, so a killed run never leaves a stale lock) on
``.redistill.lock`` in the folder for as long as it runs; a second run is refused in one line.

``--overwrite_output_dir`` must remove the previous run's outputs (sample grids, logs, the final
model) but nothing else: the run records every file it creates in ``.redistill_outputs.json``
(relative paths, outside the checkpoints, which are recognised by name and completion marker),
and only those files are removed. Files a user put in the folder are never touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_FILE = ".redistill.lock"
MANIFEST_FILE = ".redistill_outputs.json"
BOOKKEEPING = (LOCK_FILE, MANIFEST_FILE)
_CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+(\.tmp|\.old)?$")


def lock_output_dir(output_dir: str | os.PathLike):
    """Take the folder's run lock now or raise a one-line ValueError (another run holds it)."""
    from filelock import FileLock, Timeout

    # is_singleton: a second Trainer in the same process (tests, notebooks) re-enters the lock.
    lock = FileLock(str(Path(output_dir) / LOCK_FILE), timeout=0, is_singleton=True)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} is in use by another run (it holds {LOCK_FILE}); wait for it to "
            "finish or pass another --output_dir."
        ) from None
    return lock


def _files(root: Path) -> set[str]:
    """Relative paths of the files under ``root``, outside checkpoints and bookkeeping."""
    found: set[str] = set()
    if not root.is_dir():
        return found
    for child in root.iterdir():
        if child.name in BOOKKEEPING or _CHECKPOINT_NAME.match(child.name):
            continue
        if child.is_dir() and not child.is_symlink():
            found.update(str(p.relative_to(root)) for p in child.rglob("*") if not p.is_dir())
        else:
            found.add(child.name)
    return found


def recorded_outputs(output_dir: str | os.PathLike) -> list[str] | None:
    """The files a previous run recorded, or None when the folder has no (readable) record."""
    path = Path(output_dir) / MANIFEST_FILE
    try:
        files = json.loads(path.read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else None


def _record(output_dir: Path, new: set[str]) -> None:
    files = sorted(set(recorded_outputs(output_dir) or []) | new)
    tmp = output_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, output_dir / MANIFEST_FILE)


@contextlib.contextmanager
def recording(output_dir: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Record the files created inside the block (sample grids, the final model, tracker logs) as ours."""
    root = Path(output_dir)
    if not enabled:
        yield
        return
    before = _files(root)
    try:
        yield
    finally:
        new = _files(root) - before
        if new:
            _record(root, new)


def remove_previous_run(output_dir: str | os.PathLike) -> None:
    """For --overwrite_output_dir: delete the files the previous run recorded and its checkpoints.

    Folders left empty by that are removed too; everything else (a user's notes, a checkpoint-like
    folder without our completion marker) stays.
    """
    from .checkpointing import clear_old_checkpoints

    root = Path(output_dir)
    recorded = recorded_outputs(root)
    clear_old_checkpoints(str(root))
    if recorded is None:
        if _files(root):
            logger.warning(
                "%s has no record of what its previous run wrote (%s); only its checkpoints were removed.",
                root,
                MANIFEST_FILE,
            )
        return
    resolved_root = root.resolve()
    folders: set[Path] = set()
    for name in recorded:
        path = root / name
        parent = path.parent.resolve()
        if parent != resolved_root and resolved_root not in parent.parents:
            continue  # a tampered record must not reach outside the folder
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            path.unlink()  # a symlink itself, never its target
        folders.update(p for p in [parent, *parent.parents] if resolved_root in p.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: it holds something that is not ours
            folder.rmdir()
    (root / MANIFEST_FILE).unlink(missing_ok=True)
