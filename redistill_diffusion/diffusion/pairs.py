"""A teacher UNet and its ReDistill student built from a config alone, for ``redistill memory`` and the benchmarks.

Memory depends on the architecture, not on trained weights, so both are randomly initialised from a
config resolved by `diffusion.configs` (local file, model or pipeline folder, Hub id, or a shipped copy).
The timm counterpart is `classification.memory_convention.build_timm_pair`.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def check_unet_student(config: dict[str, Any], stem_stride: int, resolution: int | None = None) -> int:
    """Validate the student before building anything; return the resolution to measure at."""
    from .model import validate_student_config

    resolution = resolution or config.get("sample_size")
    if isinstance(resolution, (list, tuple)):
        resolution = int(resolution[0])
    if not resolution or int(resolution) < 1:
        raise ValueError("The UNet config has no sample_size; pass --resolution.")
    validate_student_config(
        stem_stride=stem_stride,
        down_block_types=config["down_block_types"],
        up_block_types=config["up_block_types"],
        sample_size=int(resolution),
        output_head="transposed_conv",
        downsample_type=config.get("downsample_type", "conv"),
        upsample_type=config.get("upsample_type", "conv"),
    )
    return int(resolution)


def build_unet_pair(config: dict[str, Any], stem_stride: int) -> tuple[nn.Module, nn.Module]:
    """Teacher UNet2DModel from ``config`` and its ReDistill student (random init: weights do not matter here)."""
    from diffusers import UNet2DModel

    from .model import ReDistillUNet2DModel

    teacher = UNet2DModel.from_config(config).eval()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=stem_stride, init="random").eval()
    return teacher, student


__all__ = ["build_unet_pair", "check_unet_student"]
