"""Where RED blocks go on a classifier, and which teacher feature each one learns from.

The paper's placement (docs/classification.md): one block on the stem output and one on the input and on the output of every
later student layer that still downsamples; each is paired with the first teacher feature (in
forward order) of the same spatial size, found among the teacher's own stem output and
downsampling-layer inputs/outputs. For an ImageNet ResNet18 with a stride-8 stem this gives the
paper's pairs: conv1 out <-> layer2.0 out, layer2.0 in/out <-> layer3.0 in/out, layer3.0 in/out <->
layer4.0 in/out. On ResNets the site is the downsampling block; on MobileNets it is the block's
strided depthwise conv, as in the reference configs.

Shapes come from the one probe, `taps.probe_shapes`; the pairing is `taps.match_by_resolution`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..red import red_block_specs_at
from ..taps import match_by_resolution, normalize_tap, probe_shapes
from .surgery import model_family, read_stride_plan, stage_head_names, stride_conv_name


def downsampling_taps(model: nn.Module) -> list[str]:
    """The stem output, then the input and output of every later layer that downsamples."""
    family = model_family(model)
    taps = ["conv1:output" if family == "resnet" else "conv_stem:output"]
    plan = read_stride_plan(model)
    for head, stride in zip(stage_head_names(model), plan.stage_strides):
        if stride > 1:
            site = head if family == "resnet" else stride_conv_name(model, head)
            taps += [f"{site}:input", f"{site}:output"]
    return taps


def _probe_input(model: nn.Module, input_size: Sequence[int]) -> torch.Tensor:
    parameter = next(model.parameters())
    channels, height, width = (model.in_chans, *input_size) if len(input_size) == 2 else tuple(input_size)
    return torch.zeros(1, channels, height, width, device=parameter.device, dtype=parameter.dtype)


def classifier_example_inputs(input_size: Sequence[int]):
    """``model -> (args, kwargs)`` of one forward pass at ``input_size`` (C, H, W) or (H, W): the
    example inputs `distillers.build_model_distiller` probes pairs with."""

    def example(model: nn.Module) -> tuple[tuple, dict]:
        return (_probe_input(model, input_size),), {}

    return example


def red_block_specs(model: nn.Module, taps: Sequence[str] | None = None) -> list[dict]:
    """``install_red_blocks`` specs (tap + channel count) for ``taps`` (default: the paper's placement)."""
    taps = [normalize_tap(t) for t in (taps if taps is not None else downsampling_taps(model))]
    total = read_stride_plan(model).total_stride
    return red_block_specs_at(model, taps, _probe_input(model, (2 * total, 2 * total)))


def paper_pairs(
    student: nn.Module,
    teacher: nn.Module,
    input_size: Sequence[int],
    student_taps: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """(student tap, teacher tap) pairs matched by resolution at ``input_size`` (C, H, W) or (H, W).

    Student taps default to its downsampling sites; teacher candidates are always the teacher's.
    Raises when a student feature has no teacher feature of its size.
    """
    s_taps = [
        normalize_tap(t) for t in (student_taps if student_taps is not None else downsampling_taps(student))
    ]
    t_taps = downsampling_taps(teacher)
    s_shapes = probe_shapes(student, s_taps, _probe_input(student, input_size))
    t_shapes = probe_shapes(teacher, t_taps, _probe_input(teacher, input_size))
    return match_by_resolution(s_shapes, t_shapes)


__all__ = ["classifier_example_inputs", "downsampling_taps", "paper_pairs", "red_block_specs"]
