"""`ClassifierSpec`: everything needed to rebuild a teacher or student without the training code.

A spec is the timm architecture and its arguments plus what ReDistill changed: the CIFAR stem, the
stride plan and the RED blocks. `build_classifier(spec)` turns it into a plain timm model; the spec
is saved in ``config.json`` next to the safetensors weights (see `hub.py`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ..red import install_red_blocks
from .surgery import StridePlan, apply_cifar_stem, apply_stride_plan, read_stride_plan

SPEC_ATTRIBUTE = "redistill_spec"


@dataclass
class ClassifierSpec:
    """How to rebuild a classifier: ``timm.create_model(architecture, **model_args)``, then the CIFAR
    stem, then ``stride_plan`` (None: keep the strides timm/the stem gave), then ``red_blocks``
    (``[{"tap": "conv1:output", "channels": 64}, ...]``). ``input_size`` is the (C, H, W) the model
    is meant for; ``teacher`` and ``distillation_pairs`` record provenance for model cards."""

    architecture: str
    model_args: dict[str, Any] = field(default_factory=dict)
    cifar_stem: bool = False
    stride_plan: StridePlan | None = None
    red_blocks: list[dict[str, Any]] = field(default_factory=list)
    red_kernel_size: int = 3
    red_variant: str = "full"
    red_norm: str = "batch"
    input_size: tuple[int, int, int] | None = None
    teacher: dict[str, Any] | None = None
    distillation_pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return int(self.model_args.get("num_classes", 1000))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stride_plan"] = None if self.stride_plan is None else self.stride_plan.to_dict()
        data["input_size"] = None if self.input_size is None else list(self.input_size)
        data["model_args"] = _jsonable(self.model_args)
        data["distillation_pairs"] = [list(p) for p in self.distillation_pairs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"Classifier config has unknown fields {unknown}; was it written by a newer version?"
            )
        data = dict(data)
        if data.get("stride_plan") is not None:
            data["stride_plan"] = StridePlan.from_dict(data["stride_plan"])
        if data.get("input_size") is not None:
            data["input_size"] = tuple(int(v) for v in data["input_size"])
        data["distillation_pairs"] = [tuple(p) for p in data.get("distillation_pairs", [])]
        return cls(**data)

    def replace(self, **changes: Any) -> ClassifierSpec:
        spec = copy.deepcopy(self)
        for key, value in changes.items():
            if not hasattr(spec, key):
                raise AttributeError(key)
            setattr(spec, key, value)
        return spec


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def build_classifier(spec: ClassifierSpec, pretrained: bool = False) -> nn.Module:
    """A timm model built from ``spec`` (weights random, or timm's pretrained ones before surgery)."""
    import timm

    if not timm.is_model(spec.architecture):
        raise ValueError(f"Unknown timm architecture {spec.architecture!r}; see timm.list_models().")
    model = timm.create_model(spec.architecture, pretrained=pretrained, **spec.model_args)
    if spec.cifar_stem:
        apply_cifar_stem(model)
    if spec.stride_plan is not None and spec.stride_plan != read_stride_plan(model):
        apply_stride_plan(model, spec.stride_plan, keep_final_resolution=False)
    if spec.red_blocks:
        install_red_blocks(model, spec.red_blocks, spec.red_kernel_size, spec.red_variant, norm=spec.red_norm)
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model


def spec_of(model: nn.Module) -> ClassifierSpec:
    """The spec a model was built from; for a plain timm model, one read from timm's own records."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return spec
    architecture = getattr(model, "pretrained_cfg", {}).get("architecture")
    if architecture is None or not hasattr(model, "_model_args"):
        raise ValueError(
            f"{type(model).__name__} was not made by timm.create_model or create_teacher; build the teacher with "
            "redistill_diffusion.classification.create_teacher(...) so its architecture can be recorded."
        )
    args = dict(model._model_args)
    args["num_classes"] = model.num_classes
    spec = ClassifierSpec(architecture, args, stride_plan=read_stride_plan(model))
    reference = build_classifier(spec)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if ours != theirs:
        raise ValueError(
            f"The given {architecture} differs from what timm builds from its recorded arguments (modified after "
            "creation?); build it with create_teacher(...) instead."
        )
    return spec
