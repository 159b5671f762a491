"""The paper's peak-memory convention for timm classifiers, registered with `redistill_diffusion.memory`.

the paper's convention (docs/memory.md), per sample, fp32, weights excluded:
- conv / pool layer: input + output;
- residual block: max over its convs of (input + output) + the residual tensor: the projection
  conv's input + output when the shortcut has one, else the identity residual, which the reference
  ResNet estimator takes as the input of the whole STAGE, not of the block (the quirk, kept here);
- MobileNet blocks (reference STL10 estimators): max over the convs (and the squeeze-excite,
  counted as max(pool, reduce, expand) + its input) + the block input when the block has a skip;
- RED blocks (``red_blocks.*``) as their own layers, as the reference reports them.
The network peak is the largest layer. ResNet18 at 224 gives 3.83 MB (teacher, at the max-pool)
and 0.766 MB (stride-8 stem student, at conv1), the published figures.
"""

from __future__ import annotations

from torch import nn

from ..memory import LayerMemory, ShapeProbe, red_block_bytes, register_paper_convention
from .surgery import stage_names


def _is_timm_resnet(model: nn.Module) -> bool:
    from timm.models.resnet import ResNet

    return isinstance(model, ResNet)


def _is_timm_mobilenet(model: nn.Module) -> bool:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3

    return isinstance(model, (EfficientNet, MobileNetV3))


def _convs(module: nn.Module, prefix: str) -> list[str]:
    """Names of the Conv2d layers inside ``module`` (itself included), forward order."""
    return [
        f"{prefix}.{name}" if name else prefix
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Conv2d)
    ]


def _red_layers(model: nn.Module, probe: ShapeProbe) -> list[LayerMemory]:
    red_blocks = getattr(model, "red_blocks", None)
    if not isinstance(red_blocks, nn.ModuleDict):
        return []
    return [
        LayerMemory(f"red_blocks.{key}", red_block_bytes(probe, f"red_blocks.{key}"))
        for key in red_blocks
        if probe.ran(f"red_blocks.{key}")
    ]


def resnet_paper_convention(model: nn.Module, probe: ShapeProbe) -> list[LayerMemory]:
    """ResNet / ResNeXt (timm): stem convs, stem pool, then one figure per residual block."""
    layers = [LayerMemory(name, probe.conv_bytes(name)) for name in _convs(model.conv1, "conv1")]
    if isinstance(model.maxpool, (nn.MaxPool2d, nn.AvgPool2d)):
        layers.append(LayerMemory("maxpool", probe.conv_bytes("maxpool")))
    for stage in stage_names(model):
        stage_input = probe.input_bytes(stage)
        for index, block in enumerate(model.get_submodule(stage)):
            name = f"{stage}.{index}"
            main = [c for c in ("conv1", "conv2", "conv3") if hasattr(block, c)]
            convs = max(probe.conv_bytes(f"{name}.{c}") for c in main)
            if block.downsample is not None:
                residual = probe.conv_bytes(_convs(block.downsample, f"{name}.downsample")[0])
            else:
                residual = stage_input  # the reference quirk: the stage's input, not the block's
            layers.append(LayerMemory(name, convs + residual))
    return layers + _red_layers(model, probe)


def _squeeze_excite_bytes(probe: ShapeProbe, name: str) -> int:
    """max(global pool in + out, reduce conv in + out, expand conv in + out) + the SE input."""
    pool = probe.input_bytes(name) + probe.input_bytes(f"{name}.conv_reduce")
    convs = max(probe.conv_bytes(f"{name}.conv_reduce"), probe.conv_bytes(f"{name}.conv_expand"))
    return max(pool, convs) + probe.input_bytes(name)


def mobilenet_paper_convention(model: nn.Module, probe: ShapeProbe) -> list[LayerMemory]:
    """MobileNetV2 / V3 (timm): stem conv, one figure per block, head conv."""
    layers = [LayerMemory("conv_stem", probe.conv_bytes("conv_stem"))]
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            name = f"blocks.{i}.{j}"
            parts = [
                probe.conv_bytes(f"{name}.{c}")
                for c in ("conv_pw", "conv_dw", "conv_pwl", "conv", "conv_exp")
                if isinstance(getattr(block, c, None), nn.Conv2d) and probe.ran(f"{name}.{c}")
            ]
            se = getattr(block, "se", None)
            if se is not None and hasattr(se, "conv_reduce") and probe.ran(f"{name}.se"):
                parts.append(_squeeze_excite_bytes(probe, f"{name}.se"))
            skip = probe.input_bytes(name) if getattr(block, "has_skip", False) else 0
            layers.append(LayerMemory(name, max(parts) + skip))
    if isinstance(getattr(model, "conv_head", None), nn.Conv2d) and probe.ran("conv_head"):
        layers.append(LayerMemory("conv_head", probe.conv_bytes("conv_head")))
    return layers + _red_layers(model, probe)


def register() -> None:
    """Register both conventions (idempotent: re-registering a name replaces it)."""
    register_paper_convention(_is_timm_resnet, resnet_paper_convention, name="timm.ResNet")
    register_paper_convention(_is_timm_mobilenet, mobilenet_paper_convention, name="timm.MobileNet")


register()


def build_timm_pair(
    name: str, stem_stride: int, num_classes: int | None = None
) -> tuple[nn.Module, nn.Module]:
    """A timm teacher (random weights; the paper's names such as ``resnext18`` too) and its plain ReDistill
    student (no RED blocks: the paper's figures are for the student network itself), for ``redistill memory``
    and the benchmark. Memory depends on the architecture only, so nothing is trained or downloaded."""
    from .students import create_student, create_teacher

    teacher = create_teacher(name, **({} if num_classes is None else {"num_classes": num_classes}))
    student = create_student(teacher, stem_stride=stem_stride, init="random", red_placement=None)
    return teacher.eval(), student.eval()


__all__ = ["build_timm_pair", "mobilenet_paper_convention", "register", "resnet_paper_convention"]
