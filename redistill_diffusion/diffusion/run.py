"""The two diffusion training runs behind `examples/*.py` and `redistill train` / `redistill quickstart`.

Each parses CLI flags + an optional ``--recipe`` YAML with the one parser (`config.parse_args`),
creates the `Trainer` (Accelerator, seed, output_dir checks) before anything expensive, builds the
task (all input checks) and trains. Run them under ``accelerate launch`` for several processes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from ..config import DataArguments, TrainingArguments, parse_args, to_dict
from ..errors import script_main  # noqa: F401 - the examples' entry point, re-exported
from ..files import check_output_dir_reads_nothing
from ..redaction import redact_log_handlers
from ..training.trainer import Trainer, TrainResult
from .arguments import DDPMArguments, StudentArguments, TeacherModelArguments

REDISTILL_ARGUMENTS = (TrainingArguments, DataArguments, DDPMArguments, StudentArguments)
TEACHER_ARGUMENTS = (TrainingArguments, DataArguments, DDPMArguments, TeacherModelArguments)


def _setup_logging(trainer: Trainer) -> None:
    import diffusers
    import transformers

    level = logging.INFO if trainer.accelerator.is_main_process else logging.ERROR
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("redistill_diffusion").setLevel(level)
    redact_log_handlers()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def _command(argv: Sequence[str] | None, program: str) -> str:
    """The run's flags as an equivalent `redistill train` command, for the model card (no token)."""
    from ..model_cards import training_command

    return training_command(sys.argv[1:] if argv is None else argv, program)


def run_redistill(argv: Sequence[str] | None = None, hub_api: Any = None) -> TrainResult:
    """Distil a ReDistill student from a teacher (flags: see `diffusion.arguments.StudentArguments` and friends)."""
    from .task import build_redistill_task

    training_args, data_args, ddpm_args, student_args = parse_args(REDISTILL_ARGUMENTS, argv)
    if not student_args.teacher_model_name_or_path:
        raise ValueError("Pass --teacher_model_name_or_path (a DDPM pipeline or UNet2DModel folder/Hub id).")
    check_output_dir_reads_nothing(
        training_args.output_dir, {"--teacher_model_name_or_path": student_args.teacher_model_name_or_path}
    )
    config = to_dict(training_args, data_args, ddpm_args, student_args)
    with Trainer(
        training_args, project_name="train_ddpm_redistill", config=config, hub_api=hub_api
    ) as trainer:
        _setup_logging(trainer)
        task = build_redistill_task(student_args, data_args, ddpm_args, training_args)
        task.card["command"] = _command(argv, "redistill train ddpm")
        return trainer.train(task)


def run_teacher(argv: Sequence[str] | None = None, hub_api: Any = None) -> TrainResult:
    """Train a plain DDPM UNet from a config (a teacher for ReDistill)."""
    from .task import build_teacher_task

    training_args, data_args, ddpm_args, model_args = parse_args(TEACHER_ARGUMENTS, argv)
    check_output_dir_reads_nothing(
        training_args.output_dir, {"--model_config_name_or_path": model_args.model_config_name_or_path}
    )
    config = to_dict(training_args, data_args, ddpm_args, model_args)
    with Trainer(training_args, project_name="train_ddpm_teacher", config=config, hub_api=hub_api) as trainer:
        _setup_logging(trainer)
        task = build_teacher_task(model_args, data_args, ddpm_args, training_args)
        task.card["command"] = _command(argv, "redistill train ddpm-teacher")
        return trainer.train(task)
