"""No silent minutes: a short training run says what it does until it exits."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers_training import fast_args, make_tiny_teacher


def _args(tmp_path, *extra: str) -> list[str]:
    teacher = make_tiny_teacher(tmp_path / "teacher")
    args = fast_args(tmp_path / "student", steps=4)
    # The grid uses the DDPM sampler, as by default, with the step count given on the command line.
    args[args.index("--sample_scheduler") + 1] = "ddpm"
    args[args.index("--ddpm_num_inference_steps") + 1] = "3"
    args[args.index("--measure_memory") + 1] = "true"
    return [
        "train",
        "ddpm",
        *args,
        "--teacher_model_name_or_path",
        str(teacher),
        "--distiller",
        "red",
        *extra,
    ]


def _train(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    """The run as a person starts it: its own process, output captured as a terminal would show it."""
    command = [sys.executable, "-m", "redistill_diffusion.cli", *_args(tmp_path, *extra)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_MININTERVAL": "0"}
    # The timeout only guards against a hang: alone this takes well under a minute, on a busy 2-core
    # machine several.
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _position(text: str, needle: str) -> int:
    assert needle in text, f"{needle!r} not printed:\n{text[-3000:]}"
    return text.index(needle)


def test_four_step_run_prints_every_phase_in_order_and_the_grid_uses_the_given_steps(tmp_path):
    result = _train(tmp_path)
    err = result.stderr
    order = [
        _position(err, "Steps"),
        _position(err, "Sample grid at step 4: 2 images x 3 DDPM steps"),
        _position(err, "sample grid (step 4)"),
        _position(err, "Saving the pipeline and its model card"),
        _position(err, "Peak memory report"),
    ]
    assert order == sorted(order)
    assert "3/3" in err[order[2] :]  # the denoising bar counts the requested steps, not 1000
    assert "Finished at step 4" in result.stdout
    assert (tmp_path / "student" / "samples" / "latest.png").is_file()


def test_no_final_samples_skips_the_end_of_training_grid(tmp_path, capsys):
    from redistill_diffusion.cli import main

    assert main(_args(tmp_path, "--no_final_samples")) == 0
    captured = capsys.readouterr()
    assert "Sample grid" not in captured.err and "Saving the pipeline" in captured.err
    assert not (tmp_path / "student" / "samples").exists()
    assert (tmp_path / "student" / "model_index.json").is_file()
    assert "Finished at step 4" in captured.out
