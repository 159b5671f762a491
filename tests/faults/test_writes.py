"""Writes that fail or must not happen (issue 24, items 1-4 and 6): a full disk or a read-only folder
while a checkpoint or the final model is written, a run whose output_dir is the folder it reads a model
from, --overwrite_output_dir next to the user's own files, two evaluations into one folder, and token
flags spelt any way. Each: the exit code, one line, no traceback, and the user's files byte-identical."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    USER_FILES,
    assert_clean_folder,
    assert_user_files_intact,
    classifier_argv,
    one_line,
    put_user_files,
    snapshot,
    student_argv,
    teacher_argv,
)

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.diffusion.run import run_redistill, run_teacher, script_main
from redistill_diffusion.training import checkpointing as ckpt


def _run(capfd, entry, argv) -> tuple[int, str]:
    capfd.readouterr()
    code = entry(argv)
    return code, capfd.readouterr().err


def _fail_on_call(n: int, error: BaseException):
    """A write helper stand-in that works n-1 times, then fails like a full or read-only disk."""
    calls = {"count": 0}

    def wrap(original):
        def failing(*args, **kwargs):
            calls["count"] += 1
            if calls["count"] >= n:
                raise error
            return original(*args, **kwargs)

        return failing

    return wrap


# --------------------------------------------------------------------------- item 6: checkpoints
CHECKPOINT_FAULTS = [
    (
        "enospc",
        OSError(errno.ENOSPC, "No space left on device"),
        "disk full while writing checkpoint-2: free",
    ),
    ("erofs", OSError(errno.EROFS, "Read-only file system"), "cannot write checkpoint-2"),
]


@pytest.mark.parametrize("name, error, words", CHECKPOINT_FAULTS, ids=[c[0] for c in CHECKPOINT_FAULTS])
def test_checkpoint_write_failure_is_one_line_and_leaves_no_tmp(
    tmp_path, monkeypatch, capfd, name, error, words
):
    out = tmp_path / "run"
    out.mkdir()
    before = put_user_files(out)
    state = ckpt.GeneratorState
    monkeypatch.setattr(state, "save", _fail_on_call(2, error)(state.save))  # the 2nd checkpoint's write
    code, err = _run(
        capfd, lambda a: script_main(run_teacher, a), teacher_argv(out, 3, "--overwrite_output_dir")
    )
    assert code == 2, err
    line = one_line(err, "error:")
    assert words in line, line
    if name == "enospc":
        assert "GB or lower --checkpoints_total_limit" in line
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-1"]
    assert_user_files_intact(out, before)
    assert_clean_folder(out)


def test_torch_save_on_a_full_disk_is_recognised(tmp_path, monkeypatch, capfd):
    """torch.save reports a full disk as a bare RuntimeError; the free space tells it apart from a bug."""
    import shutil

    import torch

    out = tmp_path / "run"
    real_usage = shutil.disk_usage
    monkeypatch.setattr(
        torch,
        "save",
        _fail_on_call(1, RuntimeError("PytorchStreamWriter failed writing file data/0"))(torch.save),
    )
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1024))
    code, err = _run(capfd, lambda a: script_main(run_teacher, a), teacher_argv(out, 2))
    assert code == 2 and "disk full while writing checkpoint-1" in one_line(err, "error:")
    assert not list(out.glob("checkpoint-*")) and not (out / ".redistill.lock").exists()


def test_disk_full_during_the_final_save_keeps_nothing_half_written(tmp_path, monkeypatch, capfd):
    from redistill_diffusion.diffusion import card

    out = tmp_path / "run"
    out.mkdir()
    before = put_user_files(out)
    monkeypatch.setattr(
        card,
        "save_card",
        _fail_on_call(1, OSError(errno.ENOSPC, "No space left"))(card.save_card),
    )
    argv = teacher_argv(out, 2, "--overwrite_output_dir")
    code, err = _run(capfd, lambda a: script_main(run_teacher, a), argv)
    line = one_line(err, "error:")
    assert code == 2 and "disk full while saving the final model" in line and "resume_from_checkpoint" in line
    assert not (out / "model_index.json").exists()  # staged, never committed
    assert_user_files_intact(out, before)
    assert_clean_folder(out)
    monkeypatch.undo()
    run_teacher(argv[:-1] + ["--resume_from_checkpoint", "latest"])
    assert (out / "model_index.json").is_file()
    assert_user_files_intact(out, before)


def test_early_refusal_leaves_no_lock_and_no_new_folder(tmp_path, capfd):
    out = tmp_path / "new_run"
    bad = tmp_path / "bad_config.json"
    bad.write_text("{not json")
    argv = teacher_argv(out, 1)
    argv[argv.index("tiny-ddpm-32")] = str(bad)  # refused after the run claimed output_dir
    code, err = _run(capfd, lambda a: script_main(run_teacher, a), argv)
    assert code == 2 and "bad_config.json" in one_line(err, "error:")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "checkpoint-3.tmp").mkdir()  # a killed run's leftover: refused runs leave it alone
    code, err = _run(capfd, lambda a: script_main(run_teacher, a), teacher_argv(existing, 1))
    assert code == 2 and sorted(p.name for p in existing.iterdir()) == ["checkpoint-3.tmp"]


# --------------------------------------------------------------------------- item 1: read != write
def _spellings(folder: Path, tmp_path: Path) -> list[str]:
    link = tmp_path / "link_to_teacher"
    link.symlink_to(folder)
    os.chdir(folder.parent)
    return [str(folder), f"./{folder.name}", f"./{folder.name}/../{folder.name}/", str(link)]


def test_a_run_never_writes_into_the_teacher_it_reads(teacher_pipeline, tmp_path, monkeypatch, capfd):
    """The advice of the "folder not empty" refusal (--resume_from_checkpoint latest) with the teacher's own
    folder as --output_dir: refused in every spelling, the teacher untouched."""
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_pipeline, teacher)
    before = snapshot(teacher)
    monkeypatch.chdir(tmp_path)
    for output_dir in _spellings(teacher, tmp_path) + [str(teacher / "unet")]:
        for extra in (["--resume_from_checkpoint", "latest"], ["--overwrite_output_dir"]):
            argv = student_argv(Path(output_dir), teacher, 1, *extra)
            code, err = _run(capfd, lambda a: script_main(run_redistill, a), argv)
            assert code == 2 and "reads a model from" in one_line(err, "error:"), (output_dir, err)
    # A UNet folder inside the output_dir is read from too.
    code, err = _run(capfd, lambda a: script_main(run_redistill, a), student_argv(tmp_path, teacher, 1))
    assert code == 2 and "contains" in one_line(err, "error:")
    assert snapshot(teacher) == before and not (teacher / ".redistill.lock").exists()


def test_classifier_and_eval_never_write_where_they_read(tmp_path, capfd):
    from redistill_diffusion.classification.hub import save_classifier
    from redistill_diffusion.classification.run import run_classifier
    from redistill_diffusion.classification.students import create_teacher

    model = tmp_path / "model"
    save_classifier(
        create_teacher(
            "resnet18", num_classes=4, cifar_stem=True, layers=(1, 1, 1, 1), channels=(8, 8, 16, 16)
        ),
        model,
    )
    before = snapshot(model)
    argv = classifier_argv(model, 1, "--overwrite_output_dir", "true")
    argv[argv.index("resnet18")] = str(model)
    code, err = _run(capfd, lambda a: script_main(run_classifier, a), argv)
    assert code == 2 and "--model_name_or_path" in one_line(err, "error:")
    code, err = _run(capfd, cli_main, ["eval", "--pipelines", str(model), "--output_dir", str(model / ".")])
    assert code == 2 and "--pipelines" in one_line(err, "redistill eval: error:")
    assert snapshot(model) == before


# --------------------------------------------------------------------------- item 2: overwrite
def test_overwrite_replaces_only_what_a_run_wrote_and_says_what_it_kept(
    teacher_pipeline, tmp_path, capfd, caplog
):
    import json

    out = tmp_path / "student"
    run_redistill(student_argv(out, teacher_pipeline, 1, "--measure_memory", "true"))
    ours = (out / "memory_report.json").read_bytes()
    # The user replaces three of the run's files with their own (so the manifest no longer lists them).
    manifest = out / ".redistill_outputs.json"
    files = [f for f in json.loads(manifest.read_text())["files"] if f not in USER_FILES]
    manifest.write_text(json.dumps({"files": files}))
    put_user_files(out)
    before = {k: v for k, v in snapshot(out).items() if k in USER_FILES}
    code, err = _run(
        capfd,
        lambda a: script_main(run_redistill, a),
        student_argv(out, teacher_pipeline, 1, "--measure_memory", "true", "--overwrite_output_dir"),
    )
    assert code == 0, err
    assert_user_files_intact(out, before)
    assert (out / "memory_report.json").read_bytes() != ours
    said = err + caplog.text  # (under pytest the warnings go to its log capture, else to stderr)
    assert "kept" in said.lower()
    assert all(
        name in said for name in ("README.md", "memory_report.json", "samples/latest.png", "notes.txt")
    )
    assert (out / "model_index.json").is_file() and (out / "memory_report.png").is_file()
    assert_clean_folder(out)


def test_overwrite_refuses_to_mix_with_a_model_no_run_wrote(teacher_pipeline, tmp_path, capfd):
    import shutil

    out = tmp_path / "theirs"
    shutil.copytree(teacher_pipeline, out)  # a pipeline folder with no manifest
    before = snapshot(out)
    code, err = _run(
        capfd, lambda a: script_main(run_teacher, a), teacher_argv(out, 1, "--overwrite_output_dir")
    )
    assert code == 2 and "holds a model no redistill run recorded" in one_line(err, "error:")
    assert snapshot(out) == before


# --------------------------------------------------------------------------- item 3: concurrent eval
_HOLD_LOCK = """
import sys, time
from redistill_diffusion.training.outputs import lock_output_dir
lock = lock_output_dir(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
lock.release()
"""


@pytest.mark.slow
def test_a_second_eval_into_the_same_folder_is_refused(tmp_path, capfd):
    out = tmp_path / "eval"
    out.mkdir()
    before = put_user_files(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(out)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"  # the first evaluation, still running
        code, err = _run(capfd, cli_main, ["eval", "--pipelines", "x", "--output_dir", str(out)])
        assert code == 2 and "in use by another run" in one_line(err, "redistill eval: error:")
        holder.communicate("done\n", timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 0
    assert_user_files_intact(out, before)
    assert not (out / ".redistill.lock").exists()  # the holder removed it on release


# --------------------------------------------------------------------------- item 4: tokens
SECRET = "hf_fault_suite_secret_value_42"
ENV_SECRET = "hf_fault_suite_env_token_77"


@pytest.mark.parametrize("flag", [["--hub_tok", SECRET], [f"--hub-tok={SECRET}"], ["--hub_toke", SECRET]])
def test_abbreviated_token_flags_are_refused_without_their_value(tmp_path, capfd, flag):
    out = tmp_path / "run"
    code, err = _run(capfd, cli_main, ["train", "ddpm-teacher", *teacher_argv(out, 1), *flag])
    assert code == 2 and flag[0].split("=")[0] in one_line(err, "redistill train: error:")
    assert SECRET not in err and not out.exists()


def test_tokens_never_reach_what_the_library_writes(tmp_path, monkeypatch, capfd, caplog):
    from redistill_diffusion.model_cards import training_command
    from redistill_diffusion.training.trainer import _flat_config

    monkeypatch.setenv("HF_TOKEN", ENV_SECRET)
    out = tmp_path / f"run_{ENV_SECRET}"  # the env token appears in text the run writes (paths)
    argv = teacher_argv(out, 1, "--logger", "tensorboard", "--hub_token", SECRET)
    caplog.set_level("INFO")
    code, err = _run(capfd, lambda a: script_main(run_teacher, a), argv)
    assert code == 0, err
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in data and ENV_SECRET.encode() not in data, path
    assert "***" in (out / "README.md").read_text()  # the path in the training command, masked
    assert SECRET not in err + caplog.text
    command = training_command(["--my_token", "abc", f"--hub-tok={SECRET}", "--seed", "1"], "redistill x")
    assert command == "redistill x --seed 1"
    assert _flat_config({"hub_token": SECRET, "access_token": "x", "seed": 1, "note": ENV_SECRET}) == {
        "seed": 1,
        "note": "***",
    }
    assert USER_FILES  # (the suite's user files are exercised by the other tests)
