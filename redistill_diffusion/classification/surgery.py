"""Stride surgery on timm classifiers: move downsampling into the stem, keep every weight shape.

ReDistill derives its student from the teacher by changing strides only (the paper's student;
docs/classification.md):
the stem downsamples harder (``stem_stride`` 4 or 8 instead of 2 or 4) and as many later stride-2
stages become stride 1, so the deepest feature map, the head and every weight keep their shapes
and the teacher's weights can be copied into the student.

A model's strides are described by a :class:`StridePlan`: the stem conv's stride, the stem pool's
stride (ResNets; ``None`` for families without a stem pool) and one stride per stage (timm's
stages: ``layer1..4`` of a ResNet, ``blocks.i`` of a MobileNet). ``stem_stride`` is the total
stride before the first stage: an ImageNet ResNet has 4 (conv1 2 x max-pool 2), the paper's
student 8 (conv1 8, max-pool 1).

Families: timm ``ResNet`` (ResNet / ResNeXt, BasicBlock and Bottleneck, plain or deep stems, with
conv or avg-pool shortcuts), ``EfficientNet`` (MobileNetV2) and ``MobileNetV3`` (small / large).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

FAMILIES = ("resnet", "efficientnet", "mobilenetv3")


def model_family(model: nn.Module) -> str:
    """The stride-surgery family of a timm model; raises for anything we cannot operate on."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.resnet import ResNet

    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, MobileNetV3):
        return "mobilenetv3"
    if isinstance(model, EfficientNet):
        return "efficientnet"
    raise ValueError(
        f"Stride surgery supports timm ResNet/ResNeXt, MobileNetV2 (EfficientNet class) and MobileNetV3 "
        f"models; got {type(model).__name__}. Pick one of those families."
    )


@dataclass(frozen=True)
class StridePlan:
    """Strides of one classifier: stem conv, stem pool (None: the family has none) and each stage."""

    stem_conv_stride: int
    stem_pool_stride: int | None
    stage_strides: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stage_strides", tuple(int(s) for s in self.stage_strides))
        strides = [self.stem_conv_stride, *self.stage_strides]
        if self.stem_pool_stride is not None:
            strides.append(self.stem_pool_stride)
        if any(int(s) != s or s < 1 for s in strides):
            raise ValueError(f"Strides must be positive integers, got {self.describe()}.")

    @property
    def stem_stride(self) -> int:
        """Total stride before the first stage (conv x pool)."""
        return self.stem_conv_stride * (self.stem_pool_stride or 1)

    @property
    def total_stride(self) -> int:
        """Input size / size of the deepest feature map."""
        return self.stem_stride * math.prod(self.stage_strides)

    def notation(self) -> str:
        """The paper's compact notation: stem conv stride, '-', then pool (if any) and stage strides."""
        rest = ([] if self.stem_pool_stride is None else [self.stem_pool_stride]) + list(self.stage_strides)
        return f"{self.stem_conv_stride}-" + "".join(str(s) if s < 10 else f"({s})" for s in rest)

    def describe(self) -> str:
        pool = "" if self.stem_pool_stride is None else f", stem pool {self.stem_pool_stride}"
        return f"stem conv {self.stem_conv_stride}{pool}, stages {list(self.stage_strides)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stem_conv_stride": self.stem_conv_stride,
            "stem_pool_stride": self.stem_pool_stride,
            "stage_strides": list(self.stage_strides),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StridePlan:
        return cls(int(data["stem_conv_stride"]), data.get("stem_pool_stride"), tuple(data["stage_strides"]))


# --- where each family keeps its strides -----------------------------------------------------------


def _first_conv(module: nn.Module) -> nn.Conv2d:
    if isinstance(module, nn.Conv2d):
        return module
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub
    raise ValueError(f"{type(module).__name__} holds no Conv2d to carry a stride.")


def _stem_conv(model: nn.Module) -> nn.Conv2d:
    stem = model.conv1 if model_family(model) == "resnet" else model.conv_stem
    conv = _first_conv(stem)
    if type(conv).__name__ not in ("Conv2d", "Conv2dSame"):
        raise ValueError(
            f"Unsupported stem convolution {type(conv).__name__}; only plain Conv2d stems can change stride."
        )
    return conv


def stage_names(model: nn.Module) -> list[str]:
    """Module names of the stages, in forward order (``layer1``.. or ``blocks.0``..)."""
    if model_family(model) == "resnet":
        return [name for name, _ in model.named_children() if re.fullmatch(r"layer\d+", name)]
    return [f"blocks.{i}" for i in range(len(model.blocks))]


def stage_head_names(model: nn.Module) -> list[str]:
    """Module name of the first block of each stage: the block that carries the stage's stride."""
    return [f"{name}.0" for name in stage_names(model)]


def _block_stride_conv(block: nn.Module) -> tuple[str, nn.Conv2d]:
    """(relative name, conv) of the convolution that carries a block's stride."""
    from timm.models._efficientnet_blocks import (
        ConvBnAct,
        DepthwiseSeparableConv,
        EdgeResidual,
        InvertedResidual,
    )
    from timm.models.resnet import BasicBlock, Bottleneck

    if isinstance(block, BasicBlock):
        name = "conv1"
    elif isinstance(block, Bottleneck):
        name = "conv2"
    elif isinstance(block, (DepthwiseSeparableConv, InvertedResidual)):
        name = "conv_dw"
    elif isinstance(block, EdgeResidual):
        name = "conv_exp"
    elif isinstance(block, ConvBnAct):
        name = "conv"
    else:
        raise ValueError(f"Stride surgery does not support blocks of type {type(block).__name__}.")
    conv = getattr(block, name)
    if type(conv).__name__ not in ("Conv2d", "Conv2dSame"):
        raise ValueError(
            f"Stride surgery needs a plain Conv2d in {type(block).__name__}.{name}, got {type(conv).__name__}."
        )
    if (
        not isinstance(getattr(block, "aa", nn.Identity()), nn.Identity)
        or getattr(block, "conv_s2d", None) is not None
    ):
        raise ValueError(
            f"Stride surgery does not support anti-aliased or space-to-depth {type(block).__name__} blocks."
        )
    return name, conv


def stride_conv_name(model: nn.Module, block_name: str) -> str:
    """Full module name of the conv that carries the stride of the block ``block_name``."""
    block = model.get_submodule(block_name)
    return f"{block_name}.{_block_stride_conv(block)[0]}"


def _stride(conv: nn.Conv2d) -> int:
    sh, sw = conv.stride
    if sh != sw:
        raise ValueError(f"Stride surgery needs square strides, got {conv.stride}.")
    return int(sh)


def _pool_stride(model: nn.Module) -> int | None:
    if model_family(model) != "resnet":
        return None
    pool = model.maxpool
    if isinstance(pool, nn.Identity):
        return 1
    if isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
        stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
        return int(stride)
    raise ValueError(
        f"Stride surgery does not support a {type(pool).__name__} stem pool (replace_stem_pool/aa stems)."
    )


def read_stride_plan(model: nn.Module) -> StridePlan:
    """The strides a model has now."""
    stages = [_stride(_block_stride_conv(model.get_submodule(n))[1]) for n in stage_head_names(model)]
    return StridePlan(_stride(_stem_conv(model)), _pool_stride(model), tuple(stages))


# --- planning ----------------------------------------------------------------------------------------


def _log2(value: int, what: str) -> int:
    exponent = round(math.log2(value)) if value > 0 else -1
    if exponent < 0 or 2**exponent != value:
        raise ValueError(f"{what} must be a power of two, got {value}.")
    return exponent


def student_stride_plan(teacher: StridePlan, stem_stride: int) -> StridePlan:
    """The paper's student plan: all of ``stem_stride`` on the stem conv (pool stride 1) and the
    deepest ``log2(stem_stride / teacher stem stride)`` stride-2 stages turned to stride 1, so the
    final resolution is the teacher's. A stem stride equal to the teacher's keeps the teacher's plan."""
    if stem_stride == teacher.stem_stride:
        return teacher
    if stem_stride < teacher.stem_stride or stem_stride % teacher.stem_stride:
        raise ValueError(
            f"stem_stride {stem_stride} must be a multiple of the teacher's stem stride {teacher.stem_stride} "
            "(the student downsamples earlier, never later)."
        )
    _log2(stem_stride, "stem_stride")
    to_remove = _log2(stem_stride // teacher.stem_stride, "stem_stride / teacher stem stride")
    stages = list(teacher.stage_strides)
    for i in reversed(range(len(stages))):
        if to_remove == 0:
            break
        while stages[i] > 1 and to_remove:
            stages[i] //= 2
            to_remove -= 1
    if to_remove:
        raise ValueError(
            f"stem_stride {stem_stride} is too large: the teacher's stages ({list(teacher.stage_strides)}) "
            "do not downsample enough to give it back."
        )
    pool = None if teacher.stem_pool_stride is None else 1
    return StridePlan(stem_stride, pool, tuple(stages))


def parse_stride_notation(notation: str, model: nn.Module) -> StridePlan:
    """Read the paper's notation for ``model``'s family: ``"<stem conv>-<digits>"``.

    ResNets: digits are the max-pool stride then one per stage (``"8-11221"``: conv1 8, max-pool 1,
    stages 1,2,2,1). MobileNets: one digit per stage (``"8-1211111"``) or one per block, as the
    reference code writes MobileNetV3 (``"4-22111111111"``; trailing blocks may be omitted).
    """
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(notation))
    if not match:
        raise ValueError(
            f"Stride notation {notation!r} must look like '8-11221' (stem conv stride, '-', then digits)."
        )
    stem, digits = int(match.group(1)), [int(d) for d in match.group(2)]
    family = model_family(model)
    n_stages = len(stage_names(model))
    if family == "resnet":
        if len(digits) != 1 + n_stages:
            raise ValueError(
                f"Stride notation {notation!r}: a ResNet needs {1 + n_stages} digits after the stem "
                f"(max-pool, then {n_stages} stages), got {len(digits)}."
            )
        return StridePlan(stem, digits[0], tuple(digits[1:]))
    if len(digits) == n_stages:
        return StridePlan(stem, None, tuple(digits))
    blocks = [(i, j) for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    if len(digits) > len(blocks):
        raise ValueError(
            f"Stride notation {notation!r}: {len(digits)} digits, but the model has {n_stages} stages "
            f"and {len(blocks)} blocks."
        )
    stages = [1] * n_stages
    for (i, j), stride in zip(blocks, digits):
        if j == 0:
            stages[i] = stride
        elif stride != 1:
            raise ValueError(
                f"Stride notation {notation!r} puts stride {stride} on block {j} of stage {i}; timm stages "
                "downsample in their first block only."
            )
    return StridePlan(stem, None, tuple(stages))


# --- applying a plan ---------------------------------------------------------------------------------


def _set_stride(conv: nn.Conv2d, stride: int) -> None:
    conv.stride = (stride, stride)


def _validate_block_stride(name: str, block: nn.Module, old: int, new: int) -> None:
    if old == new:
        return
    if getattr(block, "has_skip", False):
        raise ValueError(
            f"Stage head {name} has an identity shortcut; it cannot change stride ({old} -> {new})."
        )
    if hasattr(block, "downsample") and new != 1 and block.downsample is None:
        raise ValueError(
            f"Stage head {name} has an identity shortcut; stride {new} would need a new projection (not a stride change)."
        )


def _set_block_stride(block: nn.Module, stride: int) -> None:
    _, conv = _block_stride_conv(block)
    _set_stride(conv, stride)
    if hasattr(block, "stride"):
        block.stride = stride
    downsample = getattr(block, "downsample", None)
    if downsample is None:
        return
    # timm shortcuts: [Conv2d(stride), BN] (downsample_conv) or [AvgPool2d|Identity, Conv2d 1x1, BN] (downsample_avg)
    first = downsample[0]
    if isinstance(first, nn.Conv2d):
        _set_stride(first, stride)
    elif isinstance(first, (nn.AvgPool2d, nn.Identity)):
        downsample[0] = (
            nn.Identity() if stride == 1 else nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
        )
    else:
        raise ValueError(f"Stride surgery does not support a {type(first).__name__} shortcut.")


def _set_pool_stride(model: nn.Module, stride: int) -> None:
    pool = model.maxpool
    if isinstance(pool, nn.Identity):
        if stride != 1:
            model.maxpool = nn.MaxPool2d(kernel_size=3, stride=stride, padding=1)
        return
    pool.stride = stride  # kernel 3, padding 1: stride 1 keeps the size, as in the paper's student


def apply_stride_plan(model: nn.Module, plan: StridePlan, keep_final_resolution: bool = True) -> nn.Module:
    """Set ``plan``'s strides on ``model`` in place (weights untouched) and refresh ``feature_info``.

    Every check runs before anything changes: the stage count, the stem pool, shortcuts that cannot
    follow a stride change and, with ``keep_final_resolution`` (students), the total stride.
    """
    current = read_stride_plan(model)
    heads = stage_head_names(model)
    if len(plan.stage_strides) != len(heads):
        raise ValueError(
            f"Stride plan has {len(plan.stage_strides)} stage strides but {type(model).__name__} has "
            f"{len(heads)} stages ({', '.join(stage_names(model))})."
        )
    if (plan.stem_pool_stride is None) != (current.stem_pool_stride is None):
        raise ValueError(
            f"Stride plan {plan.describe()} does not fit the model's stem "
            f"({'no stem pool' if current.stem_pool_stride is None else 'conv + pool'})."
        )
    if keep_final_resolution and plan.total_stride != current.total_stride:
        raise ValueError(
            f"Stride plan {plan.describe()} gives total stride {plan.total_stride}, but the teacher's is "
            f"{current.total_stride} ({current.describe()}): the student must keep the final resolution. "
            "Turn as many later stride-2 stages to 1 as the stem adds."
        )
    for name, old, new in zip(heads, current.stage_strides, plan.stage_strides):
        _validate_block_stride(name, model.get_submodule(name), old, new)

    _set_stride(_stem_conv(model), plan.stem_conv_stride)
    if plan.stem_pool_stride is not None:
        _set_pool_stride(model, plan.stem_pool_stride)
    for name, old, new in zip(heads, current.stage_strides, plan.stage_strides):
        if old != new:
            _set_block_stride(model.get_submodule(name), new)
    refresh_feature_info(model)
    return model


def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """CIFAR-size stem for 32x32 inputs: a 3x3 stride-1 stem conv and no max-pool.

    ResNets get a new single 3x3 conv (``conv1``) with the stem's output width; MobileNets keep their
    3x3 ``conv_stem`` (and its weights) at stride 1.
    """
    family = model_family(model)
    if family == "resnet":
        old = _first_conv(model.conv1)
        out_channels = model.bn1.num_features
        model.conv1 = nn.Conv2d(
            old.in_channels,
            out_channels,
            3,
            stride=1,
            padding=1,
            bias=False,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    else:
        conv = _stem_conv(model)
        if conv.kernel_size != (3, 3):
            raise ValueError(f"CIFAR stem expects a 3x3 conv_stem, got kernel {conv.kernel_size}.")
        _set_stride(conv, 1)
    refresh_feature_info(model)
    return model


def refresh_feature_info(model: nn.Module) -> None:
    """Make ``model.feature_info`` reductions truthful by measuring them in one small forward pass
    (`taps.probe_shapes` on ``forward_features``)."""
    from ..taps import probe_shapes

    info = getattr(model, "feature_info", None)
    if not info:
        return
    entries = info.get_dicts() if hasattr(info, "get_dicts") else info
    plan = read_stride_plan(model)
    size = plan.total_stride * max(2, math.ceil(64 / plan.total_stride))
    taps = [
        f"{entry['module']}:{'input' if entry.get('hook_type') == 'forward_pre' else 'output'}"
        for entry in entries
    ]
    parameter = next(model.parameters())
    example = torch.zeros(1, model.in_chans, size, size, device=parameter.device, dtype=parameter.dtype)
    shapes = probe_shapes(model, taps, example, forward=model.forward_features, allow_missing=True)
    for entry, tap in zip(entries, taps):
        if tap in shapes:
            entry["reduction"] = size // shapes[tap][-1]


__all__ = [
    "FAMILIES",
    "StridePlan",
    "apply_cifar_stem",
    "apply_stride_plan",
    "model_family",
    "parse_stride_notation",
    "read_stride_plan",
    "refresh_feature_info",
    "stage_head_names",
    "stage_names",
    "stride_conv_name",
    "student_stride_plan",
]
