"""Checkpoint folders that are never half-written (the output_dir rules are `outputs.py`'s).

A checkpoint is first written to ``checkpoint-<step>.tmp`` by every process, flushed to disk
(fsync), and only then renamed to ``checkpoint-<step>`` by the main process. A rename is atomic,
so a process killed during a save leaves at worst a ``.tmp`` folder, which `find_latest_checkpoint`
ignores and the next save removes: ``--resume_from_checkpoint latest`` always finds a complete one.

Why not accelerate's ``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=N)``: it
numbers folders by save count (``checkpoints/checkpoint_<i>``, not by step), writes them in place
(a killed save leaves a half-written folder that its own "latest" picks up) and deletes the oldest
checkpoint BEFORE the new one is complete. Naming by step, the atomic commit and pruning only after
the commit (`prune_checkpoints`) are what this module keeps; the contents are accelerate's
``save_state``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_SUFFIX = ".tmp"
STATE_FILE = "training_state.json"  # written last inside a checkpoint; marks it complete
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_LEFTOVER_RE = re.compile(rf"^{CHECKPOINT_PREFIX}\d+({re.escape(TMP_SUFFIX)}|\.old)$")  # a save's temporaries


class GeneratorState:
    """A process's `StepContext.generator` as a small state-dict object, one file per process.

    Not `accelerator.register_for_checkpointing`: accelerate writes registered objects from the main
    process only (one file for every rank) and reads them back as a pickle (``weights_only=False``),
    but each process draws its own noise and must get its own generator back for an exact resume.
    """

    FILE = "generator_state_{rank}.safetensors"

    def __init__(self, generator, rank: int):
        self.generator = generator
        self.rank = rank

    def state_dict(self) -> dict:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["state"])

    def path(self, checkpoint_dir: str | os.PathLike) -> Path:
        return Path(checkpoint_dir) / self.FILE.format(rank=self.rank)

    def save(self, checkpoint_dir: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        save_file(self.state_dict(), str(self.path(checkpoint_dir)))

    def load(self, checkpoint_dir: str | os.PathLike) -> None:
        """Absent (a checkpoint of fewer processes): this process keeps its seeded generator."""
        from safetensors.torch import load_file

        if self.path(checkpoint_dir).is_file():
            self.load_state_dict(load_file(str(self.path(checkpoint_dir))))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def inspect_checkpoint(path: Path) -> tuple[str | None, list[str]]:
    """(why ``path`` cannot be resumed from, or None; warnings), reading every file it holds without
    loading anything into a model: JSON parses, safetensors headers cover their files, accelerate's
    ``.bin``/``.pkl`` files load with accelerate's own safe loader (``weights_only``: no pickle runs).
    An unreadable ``random_states_*.pkl`` only warns: the run resumes, but not bit-identically."""
    from accelerate.utils.other import load as accelerate_load
    from safetensors import safe_open

    from ..files import read_json

    try:
        state = read_json(path / STATE_FILE)
        int(state["global_step"])
    except (OSError, ValueError, TypeError, KeyError) as error:
        return (
            f"{path / STATE_FILE}: {_short(error) if not isinstance(error, KeyError) else 'no global_step'}",
            [],
        )
    warnings = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt"):
                    pass
            elif file.suffix == ".json":
                read_json(file)
            elif file.suffix in (".bin", ".pkl"):
                accelerate_load(str(file), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - any failure to read means the file is damaged
            if file.name.startswith("random_states_"):
                warnings.append(
                    f"{file} is unreadable ({_short(error)}); resuming without its random state, so the run "
                    "will not match an uninterrupted one exactly"
                )
                continue
            return f"{file}: {_short(error)}", warnings
    return None, warnings


def resolve_resume_path(output_dir: str, resume_from_checkpoint: str | None) -> Path | None:
    """``latest`` -> newest intact checkpoint (None when there is none yet); a path -> that folder.

    ``latest`` skips damaged checkpoints with a warning naming the file, falling back to the newest
    intact one; a damaged checkpoint named explicitly is an error naming the file.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        candidates = list_checkpoints(output_dir)
        newest_problem = None
        for path in reversed(candidates):
            problem, warnings = inspect_checkpoint(path)
            for warning in warnings:
                logger.warning("%s", warning)
            if problem is None:
                return path
            newest_problem = newest_problem or problem
            logger.warning("Skipping damaged checkpoint %s (%s); trying an older one.", path.name, problem)
        if candidates:
            raise ValueError(
                f"Every checkpoint in {output_dir} is damaged (newest: {newest_problem}); pass --overwrite_output_dir "
                "without --resume_from_checkpoint to start over."
            )
        return None
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = Path(output_dir) / resume_from_checkpoint
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"Checkpoint {resume_from_checkpoint!r} not found (or incomplete: no {STATE_FILE}); "
            "pass --resume_from_checkpoint latest or an existing checkpoint-<step> folder."
        )
    problem, warnings = inspect_checkpoint(path)
    if problem is not None:
        raise ValueError(
            f"Checkpoint {resume_from_checkpoint} is damaged: {problem}; pass --resume_from_checkpoint latest to "
            "use the newest intact one."
        )
    for warning in warnings:
        logger.warning("%s", warning)
    return path


def clear_old_checkpoints(output_dir: str) -> None:
    """With --overwrite_output_dir: drop the previous run's checkpoints (main process only).

    Only folders a run of ours wrote: ``checkpoint-<step>`` holding our completion marker and a
    save's ``checkpoint-<step>.tmp``/``.old``; a user's ``checkpoint-notes/`` stays.
    """
    for path in [*list_checkpoints(output_dir), *_leftovers(output_dir)]:
        shutil.rmtree(path, ignore_errors=True)


def _leftovers(output_dir: str) -> list[Path]:
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return [child for child in root.iterdir() if child.is_dir() and _LEFTOVER_RE.match(child.name)]


def temporary_checkpoint_dir(output_dir: str, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}{TMP_SUFFIX}"


def final_checkpoint_dir(output_dir: str, step: int) -> Path:
    return Path(output_dir) / f"{CHECKPOINT_PREFIX}{step}"


def remove_stale_temporaries(output_dir: str) -> None:
    """Drop the ``checkpoint-<step>.tmp`` folders of a killed save (the run lock makes them ours)."""
    for path in _leftovers(output_dir):
        if path.name.endswith(TMP_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(path: Path) -> None:
    for directory, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_checkpoint(tmp_dir: Path, final_dir: Path) -> Path:
    """fsync everything in ``tmp_dir``, then atomically rename it to ``final_dir`` (main process)."""
    _fsync_tree(tmp_dir)
    if final_dir.exists():  # re-reaching a step after resuming from an older checkpoint
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    return final_dir


def prune_checkpoints(output_dir: str, total_limit: int | None) -> list[Path]:
    """Keep the newest ``total_limit`` complete checkpoints; return the removed ones."""
    if not total_limit or total_limit < 1:
        return []
    checkpoints = list_checkpoints(output_dir)
    removed = checkpoints[: max(0, len(checkpoints) - total_limit)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


DISK_FULL = "disk full"
_READ_ONLY = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_LOW_SPACE_BYTES = 64 * 1024**2  # below this, a failed write is taken for a full disk


def write_failure(error: BaseException, path: Path) -> str | None:
    """What made a write under ``path`` fail, when the user can fix it: "disk full" (ENOSPC or EDQUOT
    anywhere in the error's chain, or almost no space left: torch.save reports a full disk as a bare
    RuntimeError), "read-only file system", "permission denied"; None for anything else (a bug)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError):
            if seen.errno in (errno.ENOSPC, errno.EDQUOT):
                return DISK_FULL
            if seen.errno in _READ_ONLY:
                return _READ_ONLY[seen.errno]
        if "No space left on device" in str(seen):
            return DISK_FULL
        seen = seen.__cause__ or seen.__context__
    try:
        existing = next(p for p in [path, *path.parents] if p.exists())
        if shutil.disk_usage(existing).free < _LOW_SPACE_BYTES:
            return DISK_FULL
    except (OSError, StopIteration):
        pass
    return None


def _size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def write_failure_advice(problem: str, args: Any) -> str:
    """What to do about `write_failure`'s ``problem`` in ``args.output_dir``."""
    if problem == DISK_FULL:
        latest = find_latest_checkpoint(args.output_dir)
        size = _size_bytes(latest) if latest is not None else 0
        return f"free {max(size / 1e9, 0.01):.2f} GB or lower --checkpoints_total_limit"
    return f"make {args.output_dir} writable or pass another --output_dir"


def write_failure_message(problem: str, args: Any, name: str) -> str:
    """One line for a checkpoint that could not be written (its .tmp is already removed)."""
    if problem == DISK_FULL:
        return f"disk full while writing {name}: {write_failure_advice(problem, args)}."
    return f"cannot write {name} in {args.output_dir} ({problem}): {write_failure_advice(problem, args)}."
