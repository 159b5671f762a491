"""Build the teacher/student pairs that ``redistill memory`` and the benchmark measure, from configs only.

Memory depends on the architecture, not on trained weights, so a UNet is built from its config
(resolved by `redistill_diffusion.models.configs`: local file, model or pipeline folder, Hub id, or the
configs shipped with the package) and a timm classifier from its name, both randomly initialised.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from ..models.configs import (  # noqa: F401  (re-exported: the memory API's config resolver)
    CONFIG_DIR,
    SHIPPED_UNET_CONFIGS,
    LoadedConfig,
    load_unet_config,
)


def check_unet_student(config: dict[str, Any], stem_stride: int, resolution: int | None = None) -> int:
    """Validate the student before building anything; return the resolution to measure at."""
    from ..models.unet_student import validate_student_config

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

    from ..models.unet_student import ReDistillUNet2DModel

    teacher = UNet2DModel.from_config(config).eval()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=stem_stride, init="random").eval()
    return teacher, student


# Where the classification side keeps its factories, and the names they may have, tried in order.
CLASSIFICATION_MODULES = ("redistill_diffusion.classification", "redistill_diffusion.classification.students")
TIMM_STUDENT_FACTORIES = ("create_student", "make_student", "build_student")
TIMM_TEACHER_FACTORIES = ("create_teacher",)


def _classification_function(names: tuple[str, ...]):
    for module_name in CLASSIFICATION_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in names:
            function = getattr(module, name, None)
            if callable(function):
                return function
    return None


def timm_student_factory():
    """The classification side's ``factory(teacher, stem_stride=...)``, or None where it is not installed."""
    return _classification_function(TIMM_STUDENT_FACTORIES)


def _accepted(function, **candidates: Any) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters
    return {key: value for key, value in candidates.items() if key in parameters}


def build_timm_pair(
    name: str, stem_stride: int, num_classes: int | None = None
) -> tuple[nn.Module, nn.Module]:
    """A timm teacher (random weights) and its plain ReDistill student (no RED blocks), built by
    ``redistill_diffusion.classification`` (which also accepts the paper's names, e.g. ``resnext18``)."""
    student_factory = timm_student_factory()
    if student_factory is None:
        raise ValueError(
            "Students of timm models come from redistill_diffusion.classification, which provides none of "
            f"{', '.join(TIMM_STUDENT_FACTORIES)} in this installation."
        )
    teacher_factory = _classification_function(TIMM_TEACHER_FACTORIES)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if teacher_factory is not None:
        teacher = teacher_factory(name, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"Unknown timm model {name!r}; see timm.list_models().")
        teacher = timm.create_model(name, pretrained=False, **kwargs)
    # The paper's figures are for the student network itself; RED blocks are reported apart.
    options = _accepted(student_factory, init="random", red_placement=None)
    student = student_factory(teacher, stem_stride=stem_stride, **options)
    return teacher.eval(), student.eval()
