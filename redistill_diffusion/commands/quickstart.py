"""`redistill quickstart`: the whole method in a few minutes on a laptop CPU, offline.

1. starts from the tiny DDPM teacher (``tiny-ddpm-32``) shipped with the package, trained on the built-in
   coloured shapes by ``quickstart_teacher_cpu.yaml`` (``--train_teacher`` trains it here instead),
2. derives the stem-stride-2 student (4x lower peak memory, with the sub-pixel skip), initialises it from the
   teacher's weights and trains it for 2,000 steps (the plain objective measured best per minute on these
   shapes; ``--distiller output_mse`` or ``red`` distils from the teacher at about twice the time per step),
3. leaves sample grids, two DDPMPipeline folders with model cards and a memory report (json + png).

Its settings are the packaged recipes ``redistill_diffusion/recipes/quickstart_teacher_cpu.yaml`` and
``quickstart_cpu.yaml`` (linked from ``recipes/``), read as ``--recipe`` with a few flags on top, so
the same two runs can also be launched with
``accelerate launch --num_cpu_threads_per_process 2 examples/train_ddpm_teacher.py --recipe ...``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..redaction import redact_text
from ..training.run_checks import resolve_mixed_precision

DEFAULT_OUTPUT_DIR = "outputs/quickstart"
TEACHER_RECIPE = "quickstart_teacher_cpu.yaml"
STUDENT_RECIPE = "quickstart_cpu.yaml"
PRETRAINED_TEACHER = "pretrained/quickstart-teacher"


def packaged_teacher() -> Path:
    """The quickstart teacher shipped inside the package: the pipeline `quickstart_teacher_cpu.yaml` trains
    (weights as safetensors; how it was trained: its README.md and quickstart_teacher.json)."""
    from importlib.resources import files

    return Path(str(files("redistill_diffusion").joinpath(*PRETRAINED_TEACHER.split("/"))))


def _copy_packaged_teacher(teacher_dir: Path) -> None:
    """Copy the packaged teacher into ``teacher_dir`` through the run outputs' staging and manifest, so a file
    of the user's there is never replaced (and a model of theirs is refused in one line)."""
    import shutil

    from ..training.outputs import check_no_foreign_model, staged

    source = packaged_teacher()
    if not (source / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the pretrained quickstart teacher is missing from the installed package ({source}); "
            "reinstall redistill-diffusion or pass --train_teacher"
        )
    teacher_dir.mkdir(parents=True, exist_ok=True)
    check_no_foreign_model(teacher_dir)
    with staged(teacher_dir) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


def recipe_path(name: str) -> Path:
    """A recipe shipped inside the package (``pyproject.toml`` package-data), also when installed."""
    from importlib.resources import files

    return Path(str(files("redistill_diffusion").joinpath("recipes", name)))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="train a tiny teacher and distil a 4x-lower-peak-memory student, offline, in minutes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help=f"default: {DEFAULT_OUTPUT_DIR}")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="retrain even if outputs exist")
    parser.add_argument(
        "--train_teacher",
        action="store_true",
        help="train the tiny teacher here from its recipe instead of starting from the pretrained one shipped "
        "with the package (the same recipe and seed; adds its training time)",
    )
    parser.add_argument(
        "--teacher_steps",
        type=int,
        default=None,
        help="train the teacher here for this many steps (implies --train_teacher; default: the recipe's)",
    )
    parser.add_argument(
        "--student_steps", type=int, default=None, help="default: the recipe's max_train_steps"
    )
    parser.add_argument(
        "--mixed_precision",
        choices=("auto", "no", "bf16"),
        default="auto",
        help="auto (default): bf16 where the CPU/GPU computes it natively (~1.6x faster here), else fp32",
    )
    parser.add_argument(
        "--distiller",
        default=None,
        help="default: the recipe's (vanilla, the plain student: measured best per minute here; output_mse, red, "
        "red+output_mse distil from the teacher at about twice the time per step)",
    )
    parser.set_defaults(func=run)


def use_every_cpu() -> int | None:
    """Let torch use every CPU this process may run on, unless OMP_NUM_THREADS / MKL_NUM_THREADS say otherwise.

    torch defaults to the number of *physical* cores; a small VM that exposes 1 core x 2 hardware threads
    then trains on one thread, about half the speed of two. Returns the new thread count, or None if
    unchanged."""
    import os

    import torch

    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        available = os.cpu_count() or 1
    if available <= torch.get_num_threads():
        return None
    torch.set_num_threads(available)
    return available


def _resume_flag(run_dir: Path, overwrite: bool) -> list[str]:
    """An interrupted stage (checkpoints, no final pipeline) continues from its latest checkpoint."""
    from ..training.checkpointing import find_latest_checkpoint

    if overwrite or (run_dir / "model_index.json").is_file() or find_latest_checkpoint(run_dir) is None:
        return []
    print(f"      resuming the interrupted run in {run_dir}")
    return ["--resume_from_checkpoint", "latest"]


def _stage_argv(
    recipe: str, run_dir: Path, steps: int | None, common: list[str], overwrite: bool
) -> list[str]:
    """The recipe, then the flags that override it (flags win over recipe values)."""
    argv = ["--recipe", str(recipe_path(recipe)), "--output_dir", str(run_dir), *common]
    if steps is not None:
        argv += ["--max_train_steps", str(steps)]
    return argv + _resume_flag(run_dir, overwrite)


def run(args: argparse.Namespace) -> int:
    from ..files import read_json
    from ..memory.summary import MemorySummary

    root = Path(args.output_dir)
    teacher_dir, student_dir = root / "teacher", root / "student"
    threads = use_every_cpu()
    if threads:
        print(
            f"      torch threads: {threads} (every CPU this process may use; torch counted physical cores only)"
        )
    precision = args.mixed_precision
    if precision == "auto":
        precision = resolve_mixed_precision(precision)
    overwrite = args.overwrite_output_dir
    common = ["--mixed_precision", precision, "--overwrite_output_dir", "true" if overwrite else "false"]
    timings: dict[str, float] = {}
    commands: dict[str, str] = {}
    start = time.perf_counter()
    teacher_result = _teacher_stage(args, teacher_dir, common, commands)
    timings["teacher_seconds"] = time.perf_counter() - start
    middle = time.perf_counter()
    student_result = _student_stage(args, teacher_dir, student_dir, common, commands)
    timings["student_seconds"] = time.perf_counter() - middle

    memory_path = student_dir / "memory_report.json"
    memory = MemorySummary.from_dict(read_json(memory_path) if memory_path.is_file() else None)
    compare_start = time.perf_counter()
    comparison = _compare(teacher_dir, student_dir, root)
    timings["comparison_seconds"] = time.perf_counter() - compare_start
    timings["total_seconds"] = time.perf_counter() - start
    phases = {
        "teacher": _phases(timings["teacher_seconds"], teacher_result),
        "student": _phases(timings["student_seconds"], student_result),
        "comparison (held-out losses, checkerboard share, side_by_side.png)": round(
            timings["comparison_seconds"], 1
        ),
    }
    summary = {
        "teacher": str(teacher_dir),
        "student": str(student_dir),
        "teacher_samples": str(teacher_dir / "samples" / "latest.png"),
        "student_samples": str(student_dir / "samples" / "latest.png"),
        "memory_report": {"json": str(memory_path), "png": str(student_dir / "memory_report.png")},
        "peak_memory": {
            comparison.convention: {
                "teacher_mb": comparison.teacher.peak_mb,
                "student_mb": comparison.student.peak_mb,
                "ratio": comparison.ratio,
            }
            for comparison in memory
        },
        "seconds_per_step": {
            "teacher": teacher_result.seconds_per_step if teacher_result else None,
            "student": student_result.seconds_per_step,
        },
        **comparison,
        "mixed_precision": precision,
        "commands": commands,
        "phase_seconds": phases,
        **{key: round(value, 1) for key, value in timings.items()},
    }
    (root / "summary.json").write_text(redact_text(json.dumps(summary, indent=2)))
    _print_summary(summary, root, timings["total_seconds"])
    return 0


def _teacher_stage(args: argparse.Namespace, teacher_dir: Path, common: list[str], commands: dict[str, str]):
    """[1/2]: reuse the teacher already in the output folder, copy the packaged one, or train it here
    (--train_teacher, --teacher_steps); the training result, None when no teacher was trained."""
    from ..diffusion.run import run_teacher

    overwrite = args.overwrite_output_dir
    train_teacher = args.train_teacher or args.teacher_steps is not None
    if (teacher_dir / "model_index.json").is_file() and not args.overwrite_output_dir:
        print(f"[1/2] Reusing the teacher in {teacher_dir} (--overwrite_output_dir replaces it).")
        return None
    if not train_teacher:
        print(
            f"[1/2] Copying the pretrained tiny DDPM teacher shipped with the package -> {teacher_dir} "
            f"(trained by the recipe {TEACHER_RECIPE}; --train_teacher trains it here instead)"
        )
        _copy_packaged_teacher(teacher_dir)
        commands["teacher"] = f"copied from the package ({PRETRAINED_TEACHER})"
        return None
    print(f"[1/2] Training a tiny DDPM teacher on offline shapes -> {teacher_dir}")
    teacher_argv = _stage_argv(TEACHER_RECIPE, teacher_dir, args.teacher_steps, common, overwrite)
    commands["teacher"] = _shell("redistill train ddpm-teacher", teacher_argv)
    return run_teacher(teacher_argv)


def _student_stage(
    args: argparse.Namespace,
    teacher_dir: Path,
    student_dir: Path,
    common: list[str],
    commands: dict[str, str],
):
    """[2/2]: the stem-stride-2 student of the teacher, trained with the student recipe's distiller (or
    --distiller); its training result."""
    from ..config import load_recipe
    from ..diffusion.run import run_redistill

    distiller = args.distiller or load_recipe(str(recipe_path(STUDENT_RECIPE)))["distiller"]
    how = (
        "initialised from the teacher's weights and trained on its data (--distiller vanilla, measured best "
        "per minute here; --distiller output_mse or red distils from the teacher)"
        if distiller == "vanilla"
        else f"distilled with {distiller}"
    )
    print(f"[2/2] Deriving the stem-stride-2 student (4x lower peak memory), {how} -> {student_dir}")
    student_common = [*common, "--distiller", distiller, "--teacher_model_name_or_path", str(teacher_dir)]
    overwrite = args.overwrite_output_dir
    student_argv = _stage_argv(STUDENT_RECIPE, student_dir, args.student_steps, student_common, overwrite)
    commands["student"] = _shell("redistill train ddpm", student_argv)
    return run_redistill(student_argv)


def _print_summary(summary: dict, root: Path, total_seconds: float) -> None:
    """Where everything is, and the teacher-vs-student figures of summary.json, on stdout."""
    print(f"\nDone in {total_seconds:.0f} s.")
    print(
        f"  student pipeline : {summary['student']}  (redistill_diffusion.diffusion.pipeline_io.load_pipeline, or "
        "DiffusionPipeline.from_pretrained(..., trust_remote_code=True))"
    )
    print(f"  sample grids     : {summary['teacher_samples']}  |  {summary['student_samples']}")
    for convention, value in summary["peak_memory"].items():
        print(
            f"  peak memory ({convention}): teacher {value['teacher_mb']:.3f} MB -> student {value['student_mb']:.3f} MB "
            f"({value['ratio']:.2f}x lower)"
        )
    print(
        f"  memory report    : {summary['memory_report']['json']} (+ .png)   summary: {root / 'summary.json'}"
    )
    losses = summary["heldout_denoising_loss"]
    print(
        f"  held-out denoising loss ({HELDOUT_IMAGES} unseen shapes, lower is better): teacher {losses['teacher']:.4f}"
        f"  student {losses['student']:.4f}  ({losses['student'] / losses['teacher']:.2f}x the teacher's)"
    )
    grid = summary["checkerboard_share"]
    print(
        f"  checkerboard share of the sample grids (power at the 2-pixel grid's frequencies; ~0 = none): "
        f"teacher {grid['teacher']:.4f}  student {grid['student']:.4f}"
    )
    light = summary["mean_brightness"]
    print(
        f"  mean brightness of the sample grids (0-255): teacher {light['teacher']:.0f}  student {light['student']:.0f}"
        f"  (the held-out shapes themselves: {light['heldout_images']:.0f})"
    )
    print(f"  side by side     : {summary['side_by_side']}  (teacher | student | memory per layer)")
    precision = summary["mixed_precision"]
    print(
        f"  time per phase   : {_format_phases(summary['phase_seconds'])} ({'bf16' if precision == 'bf16' else 'fp32'})"
    )


def _shell(program: str, argv: list[str]) -> str:
    import shlex

    return " ".join([program, *(shlex.quote(a) for a in argv)])


def _phases(total: float, result) -> dict[str, float] | float:
    """A stage's wall time split into data/model preparation, the training loop and the final save (a reused
    stage: its reuse time only)."""
    if result is None or not result.phase_seconds:
        return round(total, 1)
    phases = dict(result.phase_seconds)
    # The remainder; the trainer's phases come rounded to 0.1 s, so it can dip a few tenths below zero
    # when preparation took next to nothing.
    preparation = max(0.0, total - sum(phases.values()))
    return {"preparation": round(preparation, 1), **phases}


def _format_phases(phases: dict) -> str:
    parts = []
    for name, value in phases.items():
        label = name.split(" ")[0]
        if isinstance(value, dict):
            inner = ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in value.items())
            parts.append(f"{label} {sum(value.values()):.0f} s ({inner})")
        else:
            parts.append(f"{label} {value:.0f} s")
    return "; ".join(parts)


HELDOUT_IMAGES = 256


def _compare(teacher_dir: Path, student_dir: Path, root: Path) -> dict:
    """The teacher's and the student's held-out denoising loss and one side-by-side PNG."""
    from ..diffusion.evaluate import pipeline_denoising_loss
    from ..evaluation.comparison import (
        checkerboard_share,
        heldout_shapes,
        mean_brightness,
        write_side_by_side,
    )
    from ..evaluation.report import load_sample_grid
    from ..progress import announce

    announce(f"Held-out denoising loss of teacher and student ({HELDOUT_IMAGES} unseen shapes, 10 timesteps)")
    losses = {
        name: pipeline_denoising_loss(folder, num_images=HELDOUT_IMAGES)
        for name, folder in (("teacher", teacher_dir), ("student", student_dir))
    }
    loss = {name: value["denoise_loss"] for name, value in losses.items()}
    panels = [
        (teacher_dir / "samples" / "latest.png", f"teacher (held-out loss {loss['teacher']:.4f})"),
        (
            student_dir / "samples" / "latest.png",
            f"student, 4x lower peak memory (loss {loss['student']:.4f})",
        ),
    ]
    if (student_dir / "memory_report.png").is_file():
        panels.append((student_dir / "memory_report.png", "peak activation memory per layer"))
    figure = write_side_by_side(panels, root / "side_by_side.png")
    bands = {
        name: {
            k[13:]: v
            for k, v in value.items()
            if k in ("denoise_loss_low", "denoise_loss_mid", "denoise_loss_high")
        }
        for name, value in losses.items()
    }
    resolution = json.loads((student_dir / "unet" / "config.json").read_text())["sample_size"]
    grids = {
        name: load_sample_grid(folder / "samples" / "latest.png", resolution)
        for name, folder in (("teacher", teacher_dir), ("student", student_dir))
    }
    grid_share = {name: checkerboard_share(grid) for name, grid in grids.items()}
    brightness = {name: round(mean_brightness(grid), 1) for name, grid in grids.items()}
    # The yardstick for both: the held-out shapes' own brightness (an epsilon-predicting teacher's samples
    # were far lighter than their data; the packaged v-prediction teacher's match it, docs/quickstart.md).
    brightness["heldout_images"] = round(
        mean_brightness(heldout_shapes(num_images=HELDOUT_IMAGES, resolution=resolution)), 1
    )
    return {
        "heldout_denoising_loss": loss,
        "heldout_denoising_loss_bands": bands,
        "checkerboard_share": grid_share,
        "mean_brightness": brightness,
        "side_by_side": str(figure),
    }
