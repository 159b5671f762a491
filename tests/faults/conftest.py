"""Shared pieces of the fault-injection suite (issue 24): tiny runs of every entry point, the user's
files they must leave byte-identical, and a guard that keeps a stray signal from killing pytest.

Interruptions at exact moments use the library's test hook (`redistill_diffusion.interrupts.at_phase`:
``REDISTILL_TEST_SIGNAL_AT=<phase>[:<SIGNAME>]`` makes the run send itself a real signal there), so
most cases run in this process; only a signal from outside needs a subprocess.
"""

from __future__ import annotations

import hashlib
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers_training.py

from helpers_training import fast_args, make_tiny_teacher  # noqa: E402

from redistill_diffusion.interrupts import TEST_HOOK_ENV, reset_test_hook  # noqa: E402
from redistill_diffusion.training.outputs import LOCK_FILE, MANIFEST_FILE, STAGING_DIR  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
USER_FILES = {  # what a user may keep in an output folder; no run wrote these
    "README.md": b"# my own notes about this folder\n",
    "memory_report.json": b'{"mine": true}\n',
    "samples/latest.png": b"not really a png, but mine",
    "notes.txt": b"keep me\n",
}


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def put_user_files(folder: Path) -> dict[str, str]:
    """Put `USER_FILES` in ``folder``; returns the snapshot of everything the user has there now."""
    for name, data in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return snapshot(folder)


def assert_user_files_intact(folder: Path, before: dict[str, str]) -> None:
    after = snapshot(folder)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"user files changed or removed: {changed}"


def assert_clean_folder(folder: Path) -> None:
    """No lock, no staging folder, no half-written checkpoint, and every file outside the checkpoints is
    either the user's or listed in the manifest (so the next run knows what is its own)."""
    import json

    assert not (folder / LOCK_FILE).exists(), "the run lock file was left behind"
    assert not (folder / STAGING_DIR).exists(), "staged outputs were left behind"
    assert not list(folder.glob("checkpoint-*.tmp")), "a half-written checkpoint was left behind"
    listed = (
        set(json.loads((folder / MANIFEST_FILE).read_text())["files"])
        if (folder / MANIFEST_FILE).exists()
        else set()
    )
    unlisted = [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file()
        and not p.name.startswith(".redistill")
        and not str(p.relative_to(folder)).startswith("checkpoint-")
        and str(p.relative_to(folder)) not in listed
        and str(p.relative_to(folder)) not in USER_FILES
    ]
    assert not unlisted, f"files no manifest lists: {unlisted}"


def one_line(err: str, start: str) -> str:
    """The single line of ``err`` starting with ``start``; fails on a traceback or on several."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip().startswith(start) or f": {start}" in line]
    assert len(lines) == 1, f"expected one line with {start!r}:\n{err}"
    return lines[0]


@pytest.fixture(autouse=True)
def no_stray_signals(monkeypatch):
    """A signal the library does not handle must fail the test, not end the pytest session."""

    def stray(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the test process unhandled")

    previous = {s: signal.signal(s, stray) for s in (signal.SIGTERM, signal.SIGINT)}
    monkeypatch.delenv(TEST_HOOK_ENV, raising=False)
    reset_test_hook()
    yield
    reset_test_hook()
    for s, handler in previous.items():
        signal.signal(s, handler)


@pytest.fixture(scope="session")
def teacher_pipeline(tmp_path_factory) -> Path:
    return make_tiny_teacher(tmp_path_factory.mktemp("faults") / "teacher")


def teacher_argv(out: Path, steps: int = 3, *extra: str) -> list[str]:
    return fast_args(out, steps=steps, images=16)[2:] + [
        "--dataset_name",
        "redistill:shapes",
        "--model_config_name_or_path",
        "tiny-ddpm-32",
        "--use_ema",
        "false",
        "--checkpointing_steps",
        "1",
        *extra,
    ]


def student_argv(out: Path, teacher: Path, steps: int = 2, *extra: str) -> list[str]:
    return fast_args(out, steps=steps, images=16) + [
        "--teacher_model_name_or_path",
        str(teacher),
        "--checkpointing_steps",
        "1",
        *extra,
    ]


def classifier_argv(out: Path, steps: int = 2, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", "resnet18", "--distiller", "none", "--num_classes", "4",
        "--timm_model_args", '{"layers": [1, 1, 1, 1], "channels": [8, 8, 16, 16]}',
        "--cifar_stem", "--dataset_name", "redistill:shapes", "--builtin_num_images", "24",
        "--resolution", "32", "--validation_split_size", "8", "--output_dir", str(out),
        "--train_batch_size", "8", "--optimizer", "sgd", "--learning_rate", "0.05", "--lr_warmup_steps", "1",
        "--use_ema", "false", "--logger", "none", "--max_train_steps", str(steps), "--checkpointing_steps", "1",
        "--validation_steps", "1", *extra,
    ]  # fmt: skip
