"""What a diffusion task is built from, each piece checked against its flags before any training step.

The noise schedule (`build_noise_scheduler`), the training data and the held-out set (`training_data`), the
resolution checks, the distillation pairs (`parse_pairs`), the student derived from its teacher with its
distiller (`build_student_and_distiller`) and the model card's fields (`card_fields`, `student_card_fields`).
`diffusion.task` assembles them into a `DiffusionTask`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..config import DataArguments, TrainingArguments
from ..data import ImageTensorDataset, build_image_transform, load_image_dataset
from .arguments import DDPMArguments, StudentArguments

if TYPE_CHECKING:
    from ..distillers import DistillerSpec

logger = logging.getLogger(__name__)

SCHEDULE_FLAGS = {  # flag -> DDPMScheduler config key
    "ddpm_num_steps": "num_train_timesteps",
    "ddpm_beta_schedule": "beta_schedule",
    "prediction_type": "prediction_type",
}
SCHEDULE_DEFAULTS = {"num_train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon"}


def build_noise_scheduler(
    ddpm_args: DDPMArguments, config: dict[str, Any] | None = None, *, teacher: str | None = None
):
    """The DDPM noise scheduler.

    ``config``: the scheduler the model brings. A teacher trained from a config (``teacher`` None) takes the
    schedule flags on top of it; a student (``teacher`` names its teacher) trains on the teacher's schedule,
    and a flag that disagrees with it is a one-line error rather than a flag silently ignored."""
    from diffusers import DDPMScheduler

    requested = {
        key: getattr(ddpm_args, flag)
        for flag, key in SCHEDULE_FLAGS.items()
        if getattr(ddpm_args, flag) is not None
    }
    if config is None:
        return DDPMScheduler(**{**SCHEDULE_DEFAULTS, **requested})
    if teacher is not None:
        clashes = [
            f"--{flag} {requested[key]} (the teacher's: {config.get(key, SCHEDULE_DEFAULTS[key])})"
            for flag, key in SCHEDULE_FLAGS.items()
            if key in requested and requested[key] != config.get(key, SCHEDULE_DEFAULTS[key])
        ]
        if clashes:
            raise ValueError(
                f"{'; '.join(clashes)}: a student trains on its teacher's noise schedule ({teacher}); "
                "drop the flag."
            )
        return DDPMScheduler.from_config(config)
    if requested:
        logger.info("Noise schedule: %s on top of the config's scheduler", requested)
    return DDPMScheduler.from_config(config, **requested)


def _image_dataset(data_args: DataArguments, resolution: int, channels: int, seed: int):
    dataset = load_image_dataset(
        dataset_name=data_args.dataset_name,
        train_data_dir=data_args.train_data_dir,
        data_files=data_args.data_files or None,
        image_column=data_args.image_column,
        cache_dir=data_args.cache_dir,
        max_samples=data_args.max_train_samples,
        dataset_config_name=data_args.dataset_config_name,
        builtin_num_images=data_args.builtin_num_images,
        builtin_resolution=resolution,
        seed=seed,  # --max_train_samples draws a seeded random subset
    )
    return ImageTensorDataset(
        dataset, build_image_transform(resolution, channels, center_crop=data_args.center_crop)
    )


def _heldout_images(ddpm_args: DDPMArguments, resolution: int, channels: int) -> torch.Tensor | None:
    """The fixed held-out set of the denoising loss (--heldout_data), loaded once before training."""
    if not ddpm_args.heldout_data:
        return None
    from ..evaluation.denoising import load_heldout_images

    if ddpm_args.heldout_num_images < 1 or ddpm_args.heldout_timesteps < 1:
        raise ValueError(
            f"--heldout_num_images ({ddpm_args.heldout_num_images}) and --heldout_timesteps "
            f"({ddpm_args.heldout_timesteps}) must be at least 1."
        )
    return load_heldout_images(ddpm_args.heldout_data, resolution, channels, ddpm_args.heldout_num_images)


def training_data(
    data_args: DataArguments,
    ddpm_args: DDPMArguments,
    training_args: TrainingArguments | None,
    resolution: int,
    channels: int,
) -> tuple[ImageTensorDataset, torch.Tensor | None]:
    """The training images and the held-out set (or None) at the model's resolution and channels."""
    dataset = _image_dataset(data_args, resolution, channels, training_args.seed if training_args else 0)
    return dataset, _heldout_images(ddpm_args, resolution, channels)


def check_resolution_flag(data_args: DataArguments) -> None:
    """--resolution 0 used to fall back to the model's sample_size without a word."""
    if data_args.resolution is not None and data_args.resolution < 1:
        raise ValueError(
            f"--resolution must be a positive number of pixels, got {data_args.resolution}; leave it out to "
            "use the model's sample_size."
        )


def check_resolution(resolution: int, unet) -> None:
    """The UNet halves the resolution at every level but the last."""
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} must be divisible by {factor} for this UNet "
            f"({len(unet.config.block_out_channels)} levels); pass a multiple of {factor} such as "
            f"{max(factor, resolution // factor * factor)}."
        )


def parse_pairs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``["conv_in:output=down_blocks.0.downsamplers.0:output", ...]`` -> [(student_tap, teacher_tap)]."""
    pairs = []
    for spec in specs:
        student, sep, teacher = spec.partition("=")
        if not sep or not student.strip() or not teacher.strip():
            raise ValueError(
                f"--distill_pairs entry {spec!r} must look like 'student_module:output=teacher_module:output'."
            )
        pairs.append((student.strip(), teacher.strip()))
    return pairs


def red_preset(student_args: StudentArguments) -> str | None:
    """--red_preset, None for "none"."""
    return None if student_args.red_preset == "none" else student_args.red_preset


def build_student_and_distiller(
    student_args: StudentArguments,
    teacher: nn.Module,
    method: DistillerSpec,
    options: Any,
    explicit_pairs: list[tuple[str, str]],
) -> tuple[nn.Module, list[tuple[str, str]], nn.Module]:
    """The student derived from ``teacher`` (RED blocks at the preset's or the explicit pairs' taps), the
    student/teacher tap pairs and the distiller over them.

    The distiller comes from the builder classification uses too (`distillers.build_model_distiller`)."""
    from ..distillers import build_model_distiller
    from ..red import init_red_blocks
    from .model import ReDistillUNet2DModel
    from .unet_taps import red_specs, unet_example_inputs, unet_tap_pairs

    preset = red_preset(student_args)
    try:
        student = ReDistillUNet2DModel.from_teacher(
            teacher,
            stem_stride=student_args.stem_stride,
            init=student_args.student_init,
            output_head=student_args.output_head,
            head_init=student_args.student_head_init,
            red_preset=preset if method.uses_red_blocks and not explicit_pairs else None,
            red_kernel_size=student_args.red_kernel_size,
            red_variant=student_args.red_variant,
            red_norm=student_args.red_norm,
            subpixel_skip=student_args.subpixel_skip,
            refiner_channels=student_args.refiner_channels,
            stem=student_args.stem,
            input_skip=student_args.input_skip,
            refiner_depth=student_args.refiner_depth,
            input_skip_mixing=student_args.input_skip_mixing,
        )
    except (ValueError, TypeError, RuntimeError) as error:
        raise ValueError(
            f"Cannot derive a stride-{student_args.stem_stride} student from this teacher: {error}"
        ) from error
    pairs: list[tuple[str, str]] = []
    if explicit_pairs:
        pairs = explicit_pairs
        if method.uses_red_blocks:
            student.add_red_blocks(red_specs(student, [s for s, _ in pairs]))
    elif preset is not None and (method.uses_pairs or method.uses_red_blocks):
        pairs = unet_tap_pairs(student, teacher, preset)
    init_red_blocks(student, student_args.red_init)
    distiller = build_model_distiller(method.name, student, teacher, pairs, unet_example_inputs, options)
    return student, pairs, distiller


def card_fields(
    data_args: DataArguments,
    training_args: TrainingArguments | None,
    *,
    title: str,
    tags: list[str],
    details: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """`DiffusionTask.card` of either run: its title and fields, its details with the training data last, its
    tags, and the Hub repo and token when it pushes (`save_final` renders the card from them)."""
    dataset = data_args.dataset_name or data_args.train_data_dir or ", ".join(data_args.data_files)
    card = {"title": title, **fields, "details": {**(details or {}), "dataset": dataset}, "tags": tags}
    if training_args is not None and training_args.push_to_hub:
        card["hub_model_id"] = training_args.hub_model_id
        card["hub_token"] = training_args.hub_token
    return card


def student_card_fields(
    student_args: StudentArguments,
    data_args: DataArguments,
    training_args: TrainingArguments | None,
    method: DistillerSpec,
    *,
    explicit_pairs: bool,
    num_pairs: int,
) -> dict[str, Any]:
    """The student's card: its teacher, method, stem stride and how it was distilled."""
    from ..hub import is_hub_id

    teacher_name = student_args.teacher_model_name_or_path
    return card_fields(
        data_args,
        training_args,
        title=f"ReDistill student (stem stride {student_args.stem_stride}) of {Path(teacher_name).name or teacher_name}",
        teacher=teacher_name,
        teacher_is_hub_id=is_hub_id(teacher_name),
        method=student_args.distiller,
        stem_stride=student_args.stem_stride,
        details={
            "RED placement": "explicit pairs" if explicit_pairs else (red_preset(student_args) or "-"),
            "distillation pairs": num_pairs,
            "student init": student_args.student_init,
            "head init": student_args.student_head_init,
            "RED norm": student_args.red_norm if method.uses_red_blocks else "-",
            "teacher mode": student_args.teacher_mode,
            "distill weight": training_args.distill_weight if training_args else "-",
        },
        tags=["redistill-student", f"stem-stride-{student_args.stem_stride}"],
    )
