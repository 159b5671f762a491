"""Teachers and ReDistill students from timm names (or from a teacher model you already have).

    teacher = create_teacher("resnet18", num_classes=1000)
    student = create_student(teacher, stem_stride=8)          # conv1 8, max-pool 1, stages 1,2,2,1
    student = create_student("resnet18-8-11221")              # the paper's notation, same student
    student = create_student("mobilenetv2", strides="8-1211111", cifar_stem=True, num_classes=10)

The student is a plain timm model (same class, same weight shapes) whose strides changed, with RED
blocks attached at the paper's placement unless ``red_placement=None``. It carries its
`ClassifierSpec` (``model.redistill_spec``) so it can be saved and rebuilt (`hub.py`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from .placement import downsampling_taps, red_block_specs
from .spec import ClassifierSpec, build_classifier, spec_of
from .surgery import StridePlan, parse_stride_notation, read_stride_plan, student_stride_plan

# The paper's backbone names -> timm architecture + arguments.
# ResNeXt18 in the reference code is a BasicBlock net with a grouped 3x3 conv, which timm's
# BasicBlock does not allow (cardinality 1 only); its closest timm relative is the ResNeXt
# bottleneck net with the ResNet18 depth (2 blocks per stage, 32 groups of width 4).
PAPER_ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "resnext18": ("resnext50_32x4d", {"layers": [2, 2, 2, 2]}),
    "mobilenetv2": ("mobilenetv2_100", {}),
    "mobilenetv3_small": ("mobilenetv3_small_100", {}),
    "mobilenetv3_large": ("mobilenetv3_large_100", {}),
}

_NOTATION = re.compile(r"^(?P<name>.+?)-(?P<strides>\d+-\d+)$")
RED_PLACEMENTS = ("paper",)
INITS = ("teacher", "random")


def resolve_architecture(name: str) -> tuple[str, dict[str, Any], str | None]:
    """``"resnext18-4-11221"`` -> (timm name, timm kwargs, stride notation or None)."""
    import timm

    strides = None
    match = _NOTATION.match(name)
    if match and not timm.is_model(name):
        name, strides = match.group("name"), match.group("strides")
    architecture, args = PAPER_ARCHITECTURES.get(name, (name, {}))
    if not timm.is_model(architecture):
        known = ", ".join(PAPER_ARCHITECTURES)
        raise ValueError(
            f"Unknown architecture {name!r}: give a timm model name (timm.list_models()) or one of {known}."
        )
    return architecture, dict(args), strides


def create_teacher(
    name: str,
    num_classes: int = 1000,
    cifar_stem: bool = False,
    strides: str | None = None,
    pretrained: bool = False,
    input_size: Sequence[int] | None = None,
    **model_args: Any,
) -> nn.Module:
    """A timm classifier to distil from: ``name`` is a timm name, a paper name (``resnext18``,
    ``mobilenetv2``, ``mobilenetv3_small``) or either followed by the paper's stride notation
    (``"resnext18-1-21222"``: the reference STL10 teacher). ``cifar_stem`` swaps in a 3x3 stride-1
    stem without max-pool (32x32 inputs); ``model_args`` go to ``timm.create_model``."""
    architecture, args, notation = resolve_architecture(name)
    if strides is not None and notation is not None and strides != notation:
        raise ValueError(f"Strides given twice: {name!r} and strides={strides!r}; give one.")
    notation = strides or notation
    args.update(model_args)
    args["num_classes"] = int(num_classes)
    spec = ClassifierSpec(
        architecture, args, cifar_stem=bool(cifar_stem), input_size=_input_size(input_size, cifar_stem)
    )
    model = build_classifier(spec, pretrained=pretrained)
    if notation is not None:
        plan = parse_stride_notation(notation, model)
        spec = spec.replace(stride_plan=plan)
        model = _rebuilt_with(model, spec, pretrained)
    else:
        spec.stride_plan = read_stride_plan(model)
    return model


def _input_size(input_size: Sequence[int] | None, cifar_stem: bool) -> tuple[int, int, int] | None:
    if input_size is None:
        return (3, 32, 32) if cifar_stem else None
    size = tuple(int(v) for v in input_size)
    if len(size) == 2:
        size = (3, *size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) or (H, W), got {input_size}.")
    return size


def _rebuilt_with(model: nn.Module, spec: ClassifierSpec, keep_weights: bool) -> nn.Module:
    rebuilt = build_classifier(spec)
    if keep_weights:
        rebuilt.load_state_dict(model.state_dict())
    return rebuilt


def create_student(
    teacher_or_name: nn.Module | str,
    stem_stride: int = 8,
    stage_strides: Sequence[int] | None = None,
    cifar_stem: bool = False,
    init: str = "teacher",
    red_placement: str | Sequence[str] | None = "paper",
    num_classes: int | None = None,
    *,
    strides: str | None = None,
    red_kernel_size: int = 3,
    red_variant: str = "full",
    red_norm: str = "batch",
    pretrained: bool = False,
    input_size: Sequence[int] | None = None,
    **model_args: Any,
) -> nn.Module:
    """The ReDistill student of a teacher: same blocks and widths, downsampling moved into the stem.

    ``teacher_or_name``: a model from `create_teacher` / ``timm.create_model``, or a name accepted by
    `create_teacher` (then ``cifar_stem``, ``num_classes``, ``pretrained`` and ``model_args`` build
    the teacher first). ``stem_stride`` is the student's total stem stride (conv x pool; ImageNet
    ResNet teachers have 4, the paper's student 8); ``stage_strides`` overrides the default plan
    (the deepest stride-2 stages give back what the stem takes); ``strides`` is the paper's notation
    (``"8-11221"``) and overrides both. The plan must keep the teacher's final resolution.
    ``init="teacher"`` copies the teacher's weights (shapes are unchanged). ``red_placement``:
    ``"paper"`` (stem output + in/out of later downsampling layers), a list of taps, or None.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}.")
    if isinstance(red_placement, str) and red_placement not in RED_PLACEMENTS:
        raise ValueError(f"red_placement must be 'paper', a list of taps or None, got {red_placement!r}.")
    teacher, strides = _teacher_and_notation(
        teacher_or_name,
        strides,
        num_classes=num_classes,
        cifar_stem=cifar_stem,
        pretrained=pretrained,
        input_size=input_size,
        model_args=model_args,
    )
    teacher_spec = spec_of(teacher)
    teacher_plan = read_stride_plan(teacher)
    plan = _student_plan(teacher, teacher_plan, strides, stage_strides, stem_stride)

    spec = teacher_spec.replace(
        stride_plan=plan,
        red_blocks=[],
        red_kernel_size=int(red_kernel_size),
        red_variant=red_variant,
        red_norm=red_norm,
        teacher={
            "architecture": teacher_spec.architecture,
            "stride_plan": teacher_plan.to_dict(),
            "cifar_stem": teacher_spec.cifar_stem,
        },
        distillation_pairs=[],
    )
    student = build_classifier(spec)
    if init == "teacher":
        student.load_state_dict(_without_red(teacher.state_dict()))
    if red_placement is not None:
        taps = downsampling_taps(student) if isinstance(red_placement, str) else list(red_placement)
        attach_red(student, red_block_specs(student, taps), red_kernel_size, red_variant, red_norm)
    return student


def _teacher_and_notation(
    teacher_or_name: nn.Module | str,
    strides: str | None,
    *,
    num_classes: int | None,
    cifar_stem: bool,
    pretrained: bool,
    input_size: Sequence[int] | None,
    model_args: dict[str, Any],
) -> tuple[nn.Module, str | None]:
    """`create_student`'s teacher (built from a name, or the model given, checked against the other arguments)
    and its ``strides`` (a name such as ``"resnet18-8-11221"`` gives them unless ``strides`` does)."""
    if isinstance(teacher_or_name, str):
        architecture, _, notation = resolve_architecture(teacher_or_name)
        if notation is not None and strides is None:
            strides = notation  # "resnet18-8-11221" names the student's strides
            teacher_or_name = teacher_or_name[: -len(notation) - 1]
        teacher = create_teacher(
            teacher_or_name,
            num_classes=1000 if num_classes is None else num_classes,
            cifar_stem=cifar_stem,
            pretrained=pretrained,
            input_size=input_size,
            **model_args,
        )
    elif isinstance(teacher_or_name, nn.Module):
        if model_args or pretrained or cifar_stem:
            raise ValueError(
                "cifar_stem, pretrained and timm arguments describe how to build a teacher; with a teacher model "
                "given they are already decided (pass them to create_teacher instead)."
            )
        teacher = teacher_or_name
        if num_classes is not None and num_classes != teacher.num_classes:
            raise ValueError(
                f"num_classes={num_classes} differs from the teacher's {teacher.num_classes}; the student predicts "
                "the teacher's classes."
            )
    else:
        raise ValueError(
            f"teacher_or_name must be a timm model or a model name, got {type(teacher_or_name).__name__}."
        )
    return teacher, strides


def _student_plan(
    teacher: nn.Module,
    teacher_plan: StridePlan,
    strides: str | None,
    stage_strides: Sequence[int] | None,
    stem_stride: int,
) -> StridePlan:
    """The student's strides (notation, else stem + stage strides, else the default plan for the stem
    stride); it must keep the teacher's total stride."""
    if strides is not None:
        plan = parse_stride_notation(strides, teacher)
    elif stage_strides is not None:
        plan = _plan_with_stages(teacher_plan, int(stem_stride), stage_strides)
    else:
        plan = student_stride_plan(teacher_plan, int(stem_stride))
    if plan.total_stride != teacher_plan.total_stride:
        raise ValueError(
            f"Student strides {plan.notation()} ({plan.describe()}) give total stride {plan.total_stride}, the "
            f"teacher's {teacher_plan.notation()} gives {teacher_plan.total_stride}: the student must keep the "
            "teacher's final resolution."
        )
    return plan


def _plan_with_stages(teacher: StridePlan, stem_stride: int, stage_strides: Sequence[int]) -> StridePlan:
    if stem_stride == teacher.stem_stride:
        return StridePlan(teacher.stem_conv_stride, teacher.stem_pool_stride, tuple(stage_strides))
    pool = None if teacher.stem_pool_stride is None else 1
    return StridePlan(stem_stride, pool, tuple(stage_strides))


def _without_red(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("red_blocks.")}


def attach_red(
    model: nn.Module, specs: list[dict], kernel_size: int = 3, variant: str = "full", norm: str = "batch"
) -> nn.Module:
    """Attach RED blocks (`red.install_red_blocks`, shared with the UNet student) and record them in
    the model's spec under its unchanged keys (``red_blocks``, ``red_kernel_size``, ...)."""
    from ..red import install_red_blocks

    spec = spec_of(model)
    spec.red_blocks = install_red_blocks(model, specs, kernel_size, variant, norm=norm)
    spec.red_kernel_size, spec.red_variant, spec.red_norm = int(kernel_size), variant, norm
    return model


__all__ = ["PAPER_ARCHITECTURES", "attach_red", "create_student", "create_teacher", "resolve_architecture"]
