"""One parser for flags + YAML recipes; shipped recipes parse; the quickstart runs its packaged recipes; CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from redistill_diffusion.cli import build_parser, main
from redistill_diffusion.config import DataArguments, TrainingArguments, parse_args, to_dict
from redistill_diffusion.diffusion.arguments import StudentArguments
from redistill_diffusion.diffusion.run import REDISTILL_ARGUMENTS, TEACHER_ARGUMENTS

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_recipe_values_are_defaults_and_flags_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "train_batch_size: 8\nlearning_rate: 2e-4\nuse_ema: false\ndata_files: [a.parquet]\nred_distance: mse\n"
    )
    training, data, student = parse_args(
        [TrainingArguments, DataArguments, StudentArguments],
        [
            "--recipe",
            str(recipe),
            "--train_batch_size",
            "4",
            "--distill_pairs",
            "conv_in=down_blocks.0.downsamplers.0",
        ],
    )
    assert training.train_batch_size == 4  # the flag wins
    assert training.learning_rate == pytest.approx(2e-4) and training.use_ema is False  # the recipe's values
    assert data.data_files == ["a.parquet"] and student.red_distance == "mse"
    assert student.distill_pairs == ["conv_in=down_blocks.0.downsamplers.0"]
    assert parse_args([TrainingArguments], [])[0].train_batch_size == 16  # no recipe: dataclass defaults


def test_recipe_errors_are_one_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train_batch_sise: 8\n")
    with pytest.raises(ValueError, match="unknown key.*train_batch_sise"):
        parse_args([TrainingArguments], ["--recipe", str(recipe)])
    with pytest.raises(FileNotFoundError, match="not found"):
        parse_args([TrainingArguments], ["--recipe", str(tmp_path / "missing.yaml")])


def test_to_dict_drops_the_hub_token():
    assert "hub_token" not in to_dict(TrainingArguments(hub_token="hf_secret"))


@pytest.mark.parametrize(
    "name, types",
    [
        ("ddpm_cifar10_redistill.yaml", REDISTILL_ARGUMENTS),
        ("ddpm_cifar10_parity_cpu.yaml", REDISTILL_ARGUMENTS),
        ("ddpm_celeba64_redistill.yaml", REDISTILL_ARGUMENTS),
        ("ddpm_celeba64_teacher.yaml", TEACHER_ARGUMENTS),
        ("quickstart_cpu.yaml", REDISTILL_ARGUMENTS),
        ("quickstart_teacher_cpu.yaml", TEACHER_ARGUMENTS),
    ],
)
def test_shipped_recipes_parse(name, types):
    parsed = parse_args(types, ["--recipe", str(RECIPES / name)])
    assert parsed[0].output_dir.startswith("outputs/")


def test_paper_recipe_reaches_the_distiller_and_runs_every_baseline():
    """The recipe's method flags arrive in the distiller they configure, and the recipe (written for
    RED, stating RED's defaults) still runs every other method with --distiller, as the benchmarks do."""
    from redistill_diffusion.distillers import available_distillers, build_distiller, distillation_options

    recipe = ["--recipe", str(RECIPES / "ddpm_cifar10_redistill.yaml")]
    *_, student = parse_args(REDISTILL_ARGUMENTS, recipe + ["--red_alpha", "2", "--red_distance", "mse"])
    red = build_distiller(
        student.distiller, pairs=[("a", "b")], **distillation_options(student.distiller, student)
    )
    assert (red.distance, red.alphas) == ("mse", [2.0])
    *_, student = parse_args(REDISTILL_ARGUMENTS, recipe)
    for name in available_distillers():
        distillation_options(name, student)  # no "does not take option" error


def test_quickstart_recipes_are_package_data():
    """`redistill quickstart` reads its recipes from the package (an installed wheel has no recipes/)."""
    from redistill_diffusion.commands import quickstart

    for name in (quickstart.TEACHER_RECIPE, quickstart.STUDENT_RECIPE):
        packaged = quickstart.recipe_path(name)
        assert packaged.is_file() and packaged.parent.parent.name == "redistill_diffusion"
        assert (RECIPES / name).resolve() == packaged.resolve()  # recipes/ links to the packaged file
    package_data = (RECIPES.parent / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    assert '"recipes/*.yaml"' in package_data.split("[")[1]


def test_cli_registers_every_subcommand(capsys):
    import argparse

    from redistill_diffusion.cli import SUBCOMMANDS

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subparsers.choices) == set(
        SUBCOMMANDS
    )  # a command module that fails to import is missing here
    assert main(["train"]) == 2  # no kind: usage, not a crash
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "ddpm", "--help"])
    assert exit_info.value.code == 0 and "--teacher_model_name_or_path" in capsys.readouterr().out


def test_cli_train_reports_bad_input_in_one_line(tmp_path, capsys):
    code = main(
        [
            "train",
            "ddpm",
            "--teacher_model_name_or_path",
            str(tmp_path / "nope"),
            "--dataset_name",
            "redistill:shapes",
            "--output_dir",
            str(tmp_path / "out"),
            "--logger",
            "none",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("redistill train: error: Teacher") and "\n" not in err


def test_quickstart_runs_teacher_then_student_and_reuses_the_teacher(tmp_path, monkeypatch, capsys):
    """The orchestration of `redistill quickstart` with its settings shrunk to a few seconds."""
    import json

    import yaml

    from redistill_diffusion.commands import quickstart

    shrink = {
        "builtin_num_images": 16,
        "train_batch_size": 4,
        "ddpm_num_inference_steps": 2,
        "eval_batch_size": 2,
        "logger": "none",
        "resolution": 16,
    }
    packaged = quickstart.recipe_path
    shrunk = tmp_path / "recipes"
    shrunk.mkdir()
    for name in (quickstart.TEACHER_RECIPE, quickstart.STUDENT_RECIPE):
        recipe = {**yaml.safe_load(packaged(name).read_text()), **shrink}
        (shrunk / name).write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(quickstart, "recipe_path", lambda name: shrunk / name)
    out = tmp_path / "qs"
    assert (
        main(
            [
                "quickstart",
                "--output_dir",
                str(out),
                "--teacher_steps",
                "2",
                "--student_steps",
                "2",
                "--mixed_precision",
                "no",
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert Path(summary["student_samples"]).is_file() and Path(summary["teacher_samples"]).is_file()
    assert (out / "student" / "model_index.json").is_file() and (
        out / "student" / "memory_report.png"
    ).is_file()
    assert summary["peak_memory"] and all(v["ratio"] > 1.5 for v in summary["peak_memory"].values())
    printed = capsys.readouterr().out
    assert "lower" in printed
    # The ending: both held-out denoising losses, printed and in the summary, and one side-by-side PNG.
    losses = summary["heldout_denoising_loss"]
    assert set(losses) == {"teacher", "student"} and all(0 < v < 10 for v in losses.values())
    assert f"teacher {losses['teacher']:.4f}" in printed and f"student {losses['student']:.4f}" in printed
    assert Path(summary["side_by_side"]) == out / "side_by_side.png" and (out / "side_by_side.png").is_file()
    shares = summary["checkerboard_share"]
    assert set(shares) == {"teacher", "student"} and all(0 <= v <= 1 for v in shares.values())
    assert f"student {shares['student']:.4f}" in printed
    # What ran and how long each phase took (issue 23): commands, per-stage phases, the total.
    assert summary["commands"]["teacher"].startswith("redistill train ddpm-teacher --recipe")
    assert "--distiller" in summary["commands"]["student"] and summary["mixed_precision"] == "no"
    phases = summary["phase_seconds"]
    for stage in ("teacher", "student"):
        assert set(phases[stage]) == {"preparation", "setup", "training", "final_samples_and_save"}
        assert all(v >= 0 for v in phases[stage].values())
    assert "time per phase   : teacher" in printed and "(fp32)" in printed
    light = summary["mean_brightness"]
    assert set(light) == {"teacher", "student", "heldout_images"} and all(
        0 <= v <= 255 for v in light.values()
    )
    assert f"teacher {light['teacher']:.0f}  student {light['student']:.0f}" in printed
    # the yardstick: the built-in shapes are dark (backgrounds 0-80 of 255)
    assert (
        40 < light["heldout_images"] < 70
        and f"the held-out shapes themselves: {light['heldout_images']:.0f}" in printed
    )
    # A second call reuses the finished teacher; the student folder is protected unless overwritten.
    assert (
        main(
            [
                "quickstart",
                "--output_dir",
                str(out),
                "--teacher_steps",
                "2",
                "--student_steps",
                "2",
                "--mixed_precision",
                "no",
            ]
        )
        == 2
    )
    assert "Reusing the teacher" in capsys.readouterr().out
    assert (
        main(
            [
                "quickstart",
                "--output_dir",
                str(out),
                "--student_steps",
                "1",
                "--teacher_steps",
                "1",
                "--overwrite_output_dir",
                "--mixed_precision",
                "no",
            ]
        )
        == 0
    )


def test_quickstart_starts_from_the_packaged_teacher_and_keeps_user_files(tmp_path, monkeypatch, capsys):
    """By default the quickstart copies the teacher shipped in the package (through the outputs' manifest)
    and only trains the student; --overwrite_output_dir replaces the copy, never a file of the user's."""
    import json

    import yaml

    from redistill_diffusion.commands import quickstart

    packaged = quickstart.packaged_teacher()
    assert (packaged / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    trained = json.loads((packaged / "quickstart_teacher.json").read_text())
    assert trained["recipe"].endswith(quickstart.TEACHER_RECIPE)
    # the shipped weights are what the recipe (the one --train_teacher runs) trains
    teacher_recipe = yaml.safe_load(quickstart.recipe_path(quickstart.TEACHER_RECIPE).read_text())
    assert trained["steps"] == teacher_recipe["max_train_steps"]
    scheduler = json.loads((packaged / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == teacher_recipe["prediction_type"] == trained["prediction_type"]
    shrunk = tmp_path / "recipes"
    shrunk.mkdir()
    recipe = yaml.safe_load(quickstart.recipe_path(quickstart.STUDENT_RECIPE).read_text())
    recipe.update(builtin_num_images=16, train_batch_size=4, ddpm_num_inference_steps=2, eval_batch_size=2)
    recipe.update(resolution=16)  # the 32x32 teacher's student trains on 16x16 shapes: seconds, not minutes
    monkeypatch.setattr(quickstart, "HELDOUT_IMAGES", 8)
    (shrunk / quickstart.STUDENT_RECIPE).write_text(yaml.safe_dump({**recipe, "logger": "none"}))
    original = quickstart.recipe_path
    monkeypatch.setattr(
        quickstart,
        "recipe_path",
        lambda name: shrunk / name if name == quickstart.STUDENT_RECIPE else original(name),
    )
    out = tmp_path / "qs"
    argv = ["quickstart", "--output_dir", str(out), "--student_steps", "1", "--mixed_precision", "no"]
    assert main(argv) == 0
    teacher = out / "teacher"
    for name in ("unet/diffusion_pytorch_model.safetensors", "model_index.json", "samples/latest.png"):
        assert (teacher / name).read_bytes() == (packaged / name).read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["commands"]["teacher"].startswith("copied from the package")
    assert summary["phase_seconds"]["teacher"] >= 0 and set(summary["phase_seconds"]["student"]) == {
        "preparation",
        "setup",
        "training",
        "final_samples_and_save",
    }
    assert "Copying the pretrained tiny DDPM teacher" in capsys.readouterr().out
    # A file of the user's in the teacher folder survives an overwrite; the packaged copy is renewed.
    (teacher / "notes.txt").write_text("mine")
    (teacher / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"corrupted")
    assert main([*argv, "--overwrite_output_dir"]) == 0
    assert (teacher / "notes.txt").read_text() == "mine"
    assert (teacher / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        packaged / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_quickstart_uses_every_cpu_unless_the_environment_says_otherwise(monkeypatch):
    """torch counts physical cores; a VM exposing 1 core x 2 threads would train on one thread."""
    import os

    import torch

    from redistill_diffusion.commands.quickstart import use_every_cpu

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert use_every_cpu() is None and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        assert use_every_cpu() == 2 and torch.get_num_threads() == 2
        assert use_every_cpu() is None  # already using both
    finally:
        torch.set_num_threads(before)
