"""SIGTERM / SIGINT at several moments of every entry point (issue 24, items 5 and 6): exit 143 / 130,
one line saying how to resume, no traceback, the user's files byte-identical, no lock or half-written
checkpoint left, a manifest that covers every file, and a resume that completes an interrupted save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    assert_clean_folder,
    assert_user_files_intact,
    classifier_argv,
    one_line,
    put_user_files,
    student_argv,
    teacher_argv,
)

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.diffusion.run import run_redistill, run_teacher, script_main
from redistill_diffusion.interrupts import TEST_HOOK_ENV, reset_test_hook
from redistill_diffusion.training import checkpointing as ckpt

EXIT = {"SIGTERM": 143, "SIGINT": 130}


def _interrupted_run(monkeypatch, capfd, entry, argv, phase, signame):
    monkeypatch.setenv(TEST_HOOK_ENV, f"{phase}:{signame}")
    reset_test_hook()
    capfd.readouterr()
    code = entry(argv)
    err = capfd.readouterr().err
    monkeypatch.delenv(TEST_HOOK_ENV)
    assert code == EXIT[signame], err
    return one_line(err, f"interrupted by {signame}")


def _teacher(argv):
    return script_main(run_teacher, argv)


def _checkpoints(out: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(out)]


# (phase, signal, the checkpoints left, words of the line)
TEACHER_CASES = [
    ("after_setup", "SIGINT", [], "before the first step"),
    ("mid_step", "SIGTERM", ["checkpoint-1"], "at step 1"),  # the step finishes, its checkpoint is written
    ("checkpoint_save", "SIGTERM", ["checkpoint-1"], "at step 1"),  # the save in progress completes
    ("final_save", "SIGTERM", ["checkpoint-1", "checkpoint-2", "checkpoint-3"], "final model"),
]


@pytest.mark.parametrize(
    "phase, signame, checkpoints, words", TEACHER_CASES, ids=[c[0] for c in TEACHER_CASES]
)
def test_teacher_run_interrupted(tmp_path, monkeypatch, capfd, phase, signame, checkpoints, words):
    out = tmp_path / "run"
    out.mkdir()
    before = put_user_files(out)
    argv = teacher_argv(out, 3, "--overwrite_output_dir")
    line = _interrupted_run(monkeypatch, capfd, _teacher, argv, phase, signame)
    assert words in line and (
        "--resume_from_checkpoint latest" in line or "--overwrite_output_dir" in line
    ), line
    assert _checkpoints(out) == checkpoints
    assert_user_files_intact(out, before)
    assert_clean_folder(out)
    if phase == "final_save":
        # The signal came after the first file of the final save was renamed into place: the manifest
        # already lists it (assert_clean_folder) and the rest was dropped.
        assert (out / "model_index.json").is_file() and not (out / "unet" / "config.json").exists()
        assert (out / "README.md").read_bytes() == b"# my own notes about this folder\n"
        result = run_teacher(argv[:-1] + ["--resume_from_checkpoint", "latest"])  # completes the save
        assert result.global_step == 3
        for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors"):
            assert (out / name).is_file(), name
        assert_user_files_intact(out, before)
        assert_clean_folder(out)
    elif checkpoints:  # the run goes on from where it stopped
        result = run_teacher(argv[:-1] + ["--resume_from_checkpoint", "latest"])
        assert result.global_step == 3 and result.resumed_from.endswith(checkpoints[-1])
        assert (out / "model_index.json").is_file()
        assert_user_files_intact(out, before)


def test_interruption_without_checkpointing_says_how_to_start_over(tmp_path, monkeypatch, capfd):
    out = tmp_path / "run"
    argv = teacher_argv(out, 3) + ["--checkpointing_steps", "0"]
    line = _interrupted_run(monkeypatch, capfd, _teacher, argv, "mid_step", "SIGTERM")
    assert "no checkpoint (--checkpointing_steps 0)" in line and "--overwrite_output_dir" in line
    assert not _checkpoints(out)
    assert_clean_folder(out)


def test_student_run_interrupted_during_final_save_then_resumed(
    teacher_pipeline, tmp_path, monkeypatch, capfd
):
    """The issue's case: a pre-empted final save of a student left no card, memory report, component file or
    manifest; now the manifest lists what was committed and a resume writes the rest."""
    out = tmp_path / "student"
    out.mkdir()
    before = put_user_files(out)
    argv = student_argv(out, teacher_pipeline, 2, "--overwrite_output_dir", "--measure_memory", "true")
    line = _interrupted_run(
        monkeypatch, capfd, lambda a: script_main(run_redistill, a), argv, "final_save", "SIGTERM"
    )
    assert "final model" in line and "--resume_from_checkpoint latest to finish it" in line
    assert not (out / "unet" / "redistill_unet.py").exists()
    assert_user_files_intact(out, before)
    assert_clean_folder(out)

    run_redistill(argv[:-3] + ["--measure_memory", "true", "--resume_from_checkpoint", "latest"])
    assert (out / "unet" / "redistill_unet.py").is_file() and (out / "memory_report.png").is_file()
    # The user's README.md and memory_report.json were kept; the run said so and wrote everything else.
    assert_user_files_intact(out, before)
    assert_clean_folder(out)


def test_student_run_sigint_mid_step(teacher_pipeline, tmp_path, monkeypatch, capfd):
    out = tmp_path / "student"
    argv = student_argv(out, teacher_pipeline, 3)
    line = _interrupted_run(
        monkeypatch, capfd, lambda a: script_main(run_redistill, a), argv, "mid_step", "SIGINT"
    )
    assert "saved checkpoint-1" in line or "newest checkpoint is checkpoint-1" in line
    assert _checkpoints(out) == ["checkpoint-1"]
    assert_clean_folder(out)


@pytest.mark.parametrize("phase", ["mid_step", "final_save"])
def test_classifier_run_interrupted(tmp_path, monkeypatch, capfd, phase):
    from redistill_diffusion.classification.run import run_classifier

    out = tmp_path / "cls"
    out.mkdir()
    before = put_user_files(out)
    argv = classifier_argv(out, 2, "--overwrite_output_dir", "true")
    line = _interrupted_run(
        monkeypatch, capfd, lambda a: script_main(run_classifier, a), argv, phase, "SIGTERM"
    )
    assert "--resume_from_checkpoint latest" in line
    assert_user_files_intact(out, before)
    assert_clean_folder(out)
    if phase == "final_save":
        run_classifier(argv[:-2] + ["--resume_from_checkpoint", "latest"])
        assert (out / "model.safetensors").is_file() and (out / "results.json").is_file()
        assert_user_files_intact(out, before)


@pytest.mark.slow
def test_eval_interrupted_while_writing_its_report(teacher_pipeline, tmp_path, monkeypatch, capfd):
    from PIL import Image

    from redistill_diffusion.data import make_shapes

    images, _ = make_shapes(num_images=4, resolution=16, seed=1)
    heldout = tmp_path / "heldout"
    heldout.mkdir()
    for i, array in enumerate(images):
        Image.fromarray(array).save(heldout / f"{i}.png")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"results": [{"pipeline": "an earlier one"}]}\n')
    before = put_user_files(out)
    argv = ["eval", "--pipelines", str(teacher_pipeline), "--metrics", "denoise", "--heldout_data", str(heldout),
            "--num_samples", "2", "--sampler", "ddim", "--num_inference_steps", "2",
            "--heldout_num_images", "4", "--heldout_timesteps", "2", "--output_dir", str(out)]  # fmt: skip
    line = _interrupted_run(monkeypatch, capfd, cli_main, argv, "eval_report", "SIGTERM")
    assert line.startswith("redistill eval: interrupted by SIGTERM") and "metrics.json" in line
    assert_user_files_intact(out, before)  # the earlier metrics.json too: never half a file
    assert not (out / ".redistill.lock").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_sigterm_from_outside_a_real_process(tmp_path):
    """A scheduler's SIGTERM from outside, at whatever moment it lands: exit 143, one line, a checkpoint to
    resume from, and the resumed run finishes."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop(TEST_HOOK_ENV, None)
    command = [sys.executable, str(REPO / "examples" / "train_ddpm_teacher.py"), *teacher_argv(out, 400)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not ckpt.list_checkpoints(out):  # training is under way
            assert process.poll() is None and time.time() < deadline, process.stderr.read()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err
    line = one_line(err, "interrupted by SIGTERM")
    assert "--resume_from_checkpoint latest" in line
    assert_clean_folder(out)
    step = int(ckpt.find_latest_checkpoint(out).name.split("-")[1])
    state = json.loads((out / f"checkpoint-{step}" / ckpt.STATE_FILE).read_text())
    assert state["global_step"] == step
    result = run_teacher(teacher_argv(out, step + 1) + ["--resume_from_checkpoint", "latest"])
    assert result.global_step == step + 1 and (out / "model_index.json").is_file()
