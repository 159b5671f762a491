"""One run per output folder, and a record of what each run wrote there.

Two runs started at once into one ``--output_dir`` would both pass the emptiness check and then
delete each other's temporary checkpoints. The main process therefore holds an exclusive lock
(`filelock`, an OS lock that dies with the process, so a killed run never leaves a stale lock) on
``.redistill.lock`` in the folder for as long as it runs; a second run is refused in one line. The
lock file is removed again on every way out (`RunLock.release`); only a killed process leaves it,
and the next run takes it over (the OS lock died with the process).

Every file a run writes is recorded in ``.redistill_outputs.json`` (relative paths, outside the
checkpoints, which are recognised by name and completion marker). Files are written into a staging
folder first (`staged`); the commit records them in the manifest and only then renames each into
place, so an interruption at any moment leaves a folder whose manifest covers every file a run
wrote. A file already in the folder that the manifest does not list is the user's: it is never
replaced (the run's version is dropped and the run says which files it kept), and
``--overwrite_output_dir`` removes only what the manifest lists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..files import ensure_output_dir
from .checkpointing import clear_old_checkpoints

logger = logging.getLogger(__name__)

LOCK_FILE = ".redistill.lock"
MANIFEST_FILE = ".redistill_outputs.json"
STAGING_DIR = ".redistill_staging"
BOOKKEEPING = (LOCK_FILE, MANIFEST_FILE, MANIFEST_FILE + ".tmp", STAGING_DIR)
_CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+(\.tmp|\.old)?$")


class RunLock:
    """The folder's run lock: `filelock`'s OS lock on ``.redistill.lock``, whose file is removed when
    the last holder in this process releases it."""

    def __init__(self, output_dir: str | os.PathLike):
        from filelock import FileLock

        self.output_dir = str(output_dir)
        self.path = Path(output_dir) / LOCK_FILE
        # is_singleton: a second Trainer in the same process (tests, notebooks) re-enters the lock.
        self._lock = FileLock(str(self.path), timeout=0, is_singleton=True)

    def _holds_the_file(self) -> bool:
        """Whether the locked descriptor is still the file at ``path`` (a run that just finished may have
        removed it between our open and our lock; then we locked a file nobody else will see)."""
        fd = self._lock._context.lock_file_fd  # filelock's descriptor of the locked file
        try:
            return fd is not None and os.path.samestat(os.fstat(fd), os.stat(self.path))
        except OSError:
            return False

    def acquire(self) -> RunLock:
        from filelock import Timeout

        for _ in range(5):
            try:
                self._lock.acquire()
            except Timeout:
                raise ValueError(
                    f"--output_dir {self.output_dir!r} is in use by another run (it holds {LOCK_FILE}); wait for "
                    "it to finish or pass another --output_dir."
                ) from None
            if self._lock.lock_counter > 1 or self._holds_the_file():
                return self
            self._lock.release()  # the file we locked was removed under us: take the new one
        raise ValueError(f"--output_dir {self.output_dir!r}: could not take {LOCK_FILE}; try again.")

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        if self._lock.lock_counter == 1 and self._holds_the_file():
            with contextlib.suppress(OSError):  # removed while still locked: no one can take a stale copy
                self.path.unlink()
        self._lock.release()


def lock_output_dir(output_dir: str | os.PathLike) -> RunLock:
    """Take the folder's run lock now or raise a one-line ValueError (another run holds it)."""
    return RunLock(output_dir).acquire()


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


def _blocked_by_user(root: Path, name: str, ours: set[str]) -> bool:
    """Whether writing ``root/name`` would replace something that is not ours: a file (or link, or
    folder) there that the manifest does not list, or a file where one of its folders should be."""
    target = root / name
    if target.is_symlink() or target.exists():
        return name not in ours or target.is_dir()
    parent = target.parent
    while parent != root:
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            return True
        parent = parent.parent
    return False


def _commit(staging: Path, root: Path, on_commit=None) -> list[str]:
    """Move the files under ``staging`` into ``root``: record them first, then rename each into
    place; a user's file in the way stays and its name is returned."""
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if not p.is_dir())
    ours = set(recorded_outputs(root) or [])
    kept = [name for name in names if _blocked_by_user(root, name, ours)]
    moving = [name for name in names if name not in kept]
    if set(moving) - ours:
        _record(root, set(moving))  # before any rename: an interruption never leaves an unlisted file
    for name in moving:
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
        if on_commit is not None:
            on_commit(name)
    return kept


@contextlib.contextmanager
def staged(output_dir: str | os.PathLike, kept: set[str] | None = None, on_commit=None) -> Iterator[Path]:
    """A staging folder to write outputs into; when the block succeeds they are committed to
    ``output_dir`` (`_commit`), when it fails or is interrupted they are dropped.

    Names of the user's files that were kept instead of the run's are added to ``kept`` and warned
    about once each. ``on_commit(name)`` is called after each rename (the fault tests' hook).
    """
    root = Path(output_dir)
    staging = root / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's leftovers: never anyone's data
    staging.mkdir(parents=True)
    try:
        yield staging
        new_kept = [name for name in _commit(staging, root, on_commit) if kept is None or name not in kept]
        if new_kept:
            logger.warning(
                "Kept %s in %s: not written by a redistill run (not in %s), so this run did not replace %s.",
                ", ".join(new_kept),
                root,
                MANIFEST_FILE,
                "it" if len(new_kept) == 1 else "them",
            )
            if kept is not None:
                kept.update(new_kept)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path`` and rename it into place: a reader (or an
    interruption) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def foreign_files(output_dir: str | os.PathLike) -> list[str]:
    """Files in ``output_dir`` that no run recorded (outside checkpoints and bookkeeping): the user's."""
    root = Path(output_dir)
    return sorted(_files(root) - set(recorded_outputs(root) or []))


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


_MODEL_FILES = ("model_index.json", "config.json", "model.safetensors")  # a pipeline's or a classifier's
_MODEL_FOLDERS = ("unet/", "scheduler/")


def check_no_foreign_model(output_dir: str | os.PathLike) -> None:
    """--overwrite_output_dir keeps the user's files; a model it did not write would then be mixed with
    the new one (old config, new weights): refuse that in one line, before any work."""
    clash = [n for n in foreign_files(output_dir) if n in _MODEL_FILES or n.startswith(_MODEL_FOLDERS)]
    if clash:
        raise ValueError(
            f"--overwrite_output_dir: {str(output_dir)!r} holds a model no redistill run recorded ({clash[0]}; "
            f"not in {MANIFEST_FILE}), which is never replaced; move it away or pass another --output_dir."
        )


def check_output_dir(output_dir: str, resume_from_checkpoint: str | None, overwrite_output_dir: bool) -> None:
    """Refuse to mix two runs in one folder, before any work starts.

    An existing non-empty ``output_dir`` is allowed only when resuming or with ``--overwrite_output_dir``
    (which removes what the previous run wrote, see `remove_previous_run`, so ``latest`` can
    never pick up the other run's state). A path that cannot be a folder is refused here too.
    """
    root = Path(output_dir)
    if not root.is_dir():
        ensure_output_dir(output_dir)  # a file, a path under a file, a read-only place: one line now
        return
    if not any(c.name not in BOOKKEEPING for c in root.iterdir()) or resume_from_checkpoint:
        return
    if not overwrite_output_dir:
        raise ValueError(
            f"output_dir {output_dir!r} already holds files of another run; pass --resume_from_checkpoint latest "
            "to continue it, --overwrite_output_dir to replace it, or another --output_dir."
        )


def remove_previous_run(output_dir: str | os.PathLike) -> list[str]:
    """For --overwrite_output_dir: delete the files the previous run recorded and its checkpoints.

    Folders left empty by that are removed too; everything else (a user's notes, a checkpoint-like
    folder without our completion marker) stays, and is named in a warning. Returns the kept files.
    """
    root = Path(output_dir)
    recorded = recorded_outputs(root)
    clear_old_checkpoints(str(root))
    resolved_root = root.resolve()
    folders: set[Path] = set()
    for name in recorded or []:
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
    kept = sorted(_files(root))
    if kept:
        shown = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
        logger.warning(
            "--overwrite_output_dir kept %d file(s) in %s that no run wrote (not in %s): %s; the new run "
            "never replaces them.",
            len(kept),
            root,
            MANIFEST_FILE,
            shown,
        )
    if recorded is not None:
        (root / MANIFEST_FILE).unlink(missing_ok=True)
    return kept
