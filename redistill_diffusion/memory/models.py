"""Build the teacher/student pairs that ``redistill memory`` and the benchmark measure, from configs only.

Memory depends on the architecture, not on trained weights, so a UNet is built from its config
(local file, model folder, pipeline folder, Hub id, or the configs shipped with the package) and
a timm classifier from its name, both randomly initialised.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Hub ids whose UNet config ships with the package, for machines without internet.
SHIPPED_UNET_CONFIGS = {
    "google/ddpm-cifar10-32": CONFIG_DIR / "google-ddpm-cifar10-32" / "unet" / "config.json",
    "google/ddpm-cat-256": CONFIG_DIR / "google-ddpm-cat-256" / "unet" / "config.json",
}
TEACHER_UNET_CLASSES = ("UNet2DModel",)


@dataclass
class LoadedConfig:
    config: dict[str, Any]
    source: str  # where it came from, in words, for the report


def _load_local(path: Path) -> LoadedConfig:
    from diffusers import UNet2DModel

    if path.is_file():
        return LoadedConfig(UNet2DModel.load_config(str(path)), f"config file {path}")
    for candidate in (path / "config.json", path / "unet" / "config.json"):
        if candidate.is_file():
            return LoadedConfig(UNet2DModel.load_config(str(candidate)), f"config {candidate}")
    raise FileNotFoundError(
        f"{path} has neither config.json (model folder) nor unet/config.json (pipeline folder)."
    )


def _load_from_hub(repo_id: str) -> LoadedConfig:
    from diffusers import UNet2DModel

    errors = []
    for subfolder in (None, "unet"):
        try:
            with warnings.catch_warnings():  # diffusers passes a deprecated hf_hub_download argument
                warnings.simplefilter("ignore", UserWarning)
                config = UNet2DModel.load_config(repo_id, subfolder=subfolder)
        except (OSError, ValueError) as error:
            errors.append(error)
            continue
        where = f"{repo_id}/{subfolder}" if subfolder else repo_id
        return LoadedConfig(config, f"the Hub ({where})")
    shipped = SHIPPED_UNET_CONFIGS.get(repo_id)
    if shipped is not None and shipped.is_file():
        loaded = _load_local(shipped)
        loaded.source = (
            f"the copy of {repo_id}'s config shipped with redistill-diffusion (the Hub was not reachable)"
        )
        return loaded
    first = str(errors[0]).splitlines()[0] if errors else "unknown error"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        first += "; HF_HUB_OFFLINE is set"
    raise FileNotFoundError(
        f"{repo_id!r} is not a local path and its config could not be loaded from the Hub ({first}). "
        f"Pass a config JSON, a model folder or a pipeline folder, or one of the shipped ids: "
        f"{', '.join(SHIPPED_UNET_CONFIGS)} (or shipped names: {', '.join(_shipped_names())})."
    )


def _shipped_names() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if (p / "unet" / "config.json").is_file())


def load_unet_config(spec: str | os.PathLike) -> LoadedConfig:
    """The UNet config named by ``spec``: a local path always wins, then the Hub, then the shipped copy."""
    spec = str(spec)
    path = Path(spec).expanduser()
    shipped_dir = CONFIG_DIR / spec
    if path.exists():
        loaded = _load_local(path)
    elif "/" not in spec and shipped_dir.is_dir():  # a shipped config name, e.g. tiny-ddpm-32
        loaded = _load_local(shipped_dir)
        loaded.source = f"the {spec} config shipped with redistill-diffusion"
    elif spec.endswith(".json") or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise FileNotFoundError(
            f"No such file or folder: {spec} (and it is not a Hub id of the form owner/name, nor a shipped "
            f"config: {', '.join(_shipped_names())})."
        )
    else:
        loaded = _load_from_hub(spec)
    class_name = loaded.config.get("_class_name")
    if class_name not in TEACHER_UNET_CLASSES or "down_block_types" not in loaded.config:
        hint = (
            " It is a ReDistill student; pass its teacher's config."
            if class_name == "ReDistillUNet2DModel"
            else ""
        )
        raise ValueError(
            f"{spec} is not a UNet2DModel config (_class_name={class_name!r}); pass the teacher UNet's config.json, "
            f"its folder or its pipeline folder.{hint}"
        )
    return loaded


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
