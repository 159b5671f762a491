"""A UNet's features for distillation: probe inputs, RED block specs at any taps, student/teacher tap pairs.

The student model itself (`diffusion.model`) carries no probing code: it is the self-contained file
saved with every student. What needs a forward pass of student and teacher lives here, on the shared
tap tools (`taps.probe_shapes`, `taps.match_by_resolution`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DModel

from ..red import red_block_specs_at
from ..taps import match_by_resolution, probe_shapes
from .model import ReDistillUNet2DModel, resampler_taps, spatial_size


def unet_example_inputs(
    model: UNet2DModel, batch_size: int = 1, resolution: int | None = None
) -> tuple[tuple, dict[str, Any]]:
    """(args, kwargs) of one forward pass at the model's sample size: zero images, timestep 0 (and
    class 0 for a class-conditional UNet), on the model's device and dtype. The shape probes use it."""
    size = spatial_size(resolution or model.config.sample_size)
    if size is None:
        raise ValueError("The UNet config has no sample_size; pass a resolution.")
    param = next(model.parameters())
    sample = torch.zeros(batch_size, model.config.in_channels, *size, device=param.device, dtype=param.dtype)
    kwargs = {}
    if model.class_embedding is not None:
        kwargs["class_labels"] = torch.zeros(batch_size, dtype=torch.long, device=param.device)
    return (sample, torch.zeros(batch_size, dtype=torch.long, device=param.device)), kwargs


def _probe(model: UNet2DModel, taps: Sequence[str]) -> dict[str, torch.Size]:
    args, kwargs = unet_example_inputs(model)
    return probe_shapes(model, taps, *args, **kwargs)


def red_specs(model: UNet2DModel, taps: Sequence[str]) -> list[dict[str, Any]]:
    """RED block specs (tap + the channel count found there) for ``taps`` of a UNet."""
    args, kwargs = unet_example_inputs(model)
    return red_block_specs_at(model, taps, *args, **kwargs)


def unet_tap_pairs(
    student: ReDistillUNet2DModel, teacher: UNet2DModel, preset: str = "paper"
) -> list[tuple[str, str]]:
    """(student_tap, teacher_tap) pairs of a RED placement preset, matched by resolution.

    The student taps are the preset's (`ReDistillUNet2DModel.red_preset_taps`). ``paper``: stem output
    <-> the teacher's downsampler output at that resolution; the input of the student's tail
    (``conv_norm_out``, before GroupNorm -> SiLU -> head, as in the reference code) <-> the teacher's
    upsampler input at that resolution (the TMLR placement). ``full``: also the student's remaining
    (still resampling) layers, each paired with the next unused teacher resampling tap of the same size.
    """
    stem, tail, *resamplers = student.red_preset_taps(preset)
    teacher_down, teacher_up = resampler_taps(teacher)
    teacher_shapes = _probe(teacher, teacher_down + teacher_up)
    student_shapes = _probe(student, [stem, tail, *resamplers])

    pairs = match_by_resolution(
        {stem: student_shapes[stem]},
        {t: teacher_shapes[t] for t in teacher_down if t.endswith(":output")},
    )
    up_inputs = {t: teacher_shapes[t] for t in reversed(teacher_up) if t.endswith(":input")}
    pairs += match_by_resolution({tail: student_shapes[tail]}, up_inputs)
    used = {t for _, t in pairs}
    for prefix, teacher_taps in (("down_blocks.", teacher_down), ("up_blocks.", teacher_up)):
        pairs += match_by_resolution(
            {t: student_shapes[t] for t in resamplers if t.startswith(prefix)},
            {t: teacher_shapes[t] for t in teacher_taps if t not in used},
        )
    return pairs


__all__ = ["red_specs", "unet_example_inputs", "unet_tap_pairs"]
