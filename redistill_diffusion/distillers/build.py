"""Composites (``red+output_mse``: the average of their components), the name parser `parse_distiller`, the
option routing `distillation_options` and the builders `build_distiller` / `build_model_distiller`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..red import RED_BLOCKS_ATTRIBUTE, red_loss_pairs
from ..taps import probe_shapes
from .base import _DISTILLERS, Distiller, Pair, Shapes


class CompositeDistiller(Distiller):
    """Several methods at once: the union of their named losses, each scaled by 1/n so the term is their average."""

    uses_pairs = True

    def __init__(self, components: Sequence[Distiller]):
        nn.Module.__init__(self)
        self.components = nn.ModuleDict({c.name: c for c in components})
        self.name = "+".join(self.components)
        self.requires_teacher = any(c.requires_teacher for c in components)
        self.requires_target = any(c.requires_target for c in components)
        self.pairs = list(dict.fromkeys(p for c in components for p in c.pairs))

    def student_taps(self) -> list[str]:
        return list(dict.fromkeys(t for c in self.components.values() for t in c.student_taps()))

    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t for c in self.components.values() for t in c.teacher_taps()))

    def forward(self, *, student_output, teacher_output, student_features, teacher_features, target=None):
        scale = 1.0 / len(self.components)
        losses: dict[str, torch.Tensor] = {}
        for component in self.components.values():
            for key, value in component(
                student_output=student_output,
                teacher_output=teacher_output,
                student_features=student_features,
                teacher_features=teacher_features,
                target=target,
            ).items():
                losses[key] = scale * value
        return losses

    def extra_repr(self) -> str:
        return ""


def option_defaults(cls: type[Distiller]) -> dict[str, Any]:
    """The options a method takes, with their defaults: the fields of its ``Options`` dataclass."""
    return asdict(cls.Options())


@dataclass(frozen=True)
class DistillerSpec:
    """A parsed distiller name: its components and what they need, read from the method classes."""

    name: str  # normalised: lower case, components joined by '+'
    parts: tuple[str, ...]

    @property
    def classes(self) -> tuple[type[Distiller], ...]:
        return tuple(_DISTILLERS[p] for p in self.parts)

    @property
    def options(self) -> dict[str, Any]:
        """Every option the components take, with its default."""
        merged: dict[str, Any] = {}
        for cls in self.classes:
            merged.update(option_defaults(cls))
        return merged

    @property
    def requires_teacher(self) -> bool:
        return any(c.requires_teacher for c in self.classes)

    @property
    def uses_pairs(self) -> bool:
        """Some component compares tapped features (needs (student tap, teacher tap) pairs)."""
        return any(c.uses_pairs for c in self.classes)

    @property
    def uses_red_blocks(self) -> bool:
        """The student carries RED blocks for this method (red itself, and student_plus)."""
        return any(c.uses_red_blocks for c in self.classes)


def parse_distiller(name: str) -> DistillerSpec:
    """The one parser of distiller names: ``"red"``, ``"kd"``, composites such as ``"red+output_mse"``.

    Case and spaces around '+' do not matter. Unknown components, a component listed twice and a
    teacherless method (vanilla, student_plus) in a composite raise one clear error.
    """
    parts = tuple(p.strip().lower() for p in str(name).split("+"))
    for part in parts:
        if part not in _DISTILLERS:
            raise ValueError(
                f"Unknown distiller {part!r} in {name!r}; choose one of {', '.join(_DISTILLERS)} (combine with '+', e.g. red+kd)."
            )
    if len(set(parts)) != len(parts):
        raise ValueError(f"Distiller {name!r} lists a method twice.")
    if len(parts) > 1:
        teacherless = [p for p in parts if not _DISTILLERS[p].requires_teacher]
        if teacherless:
            raise ValueError(
                f"Distiller {name!r}: {', '.join(teacherless)} has no distillation term and cannot be combined."
            )
    return DistillerSpec("+".join(parts), parts)


def distiller_options(name: str) -> dict[str, Any]:
    """The keyword options a method (or composite) accepts, with their defaults."""
    return parse_distiller(name).options


def all_distiller_options() -> dict[str, Any]:
    """Every option of every registered method, with its default (the distillation CLI flags)."""
    merged: dict[str, Any] = {}
    for cls in _DISTILLERS.values():
        merged.update(option_defaults(cls))
    return merged


def build_distiller(
    name: str,
    *,
    pairs: Iterable[Pair] = (),
    student_shapes: Shapes | None = None,
    teacher_shapes: Shapes | None = None,
    **options: Any,
) -> Distiller:
    """Build the distiller called ``name`` (``"red"``, ``"kd"``, ``"red+output_mse"``, ...).

    ``pairs`` are (student_tap, teacher_tap) for the feature methods (red, fitnet, at); output methods
    ignore them. ``student_shapes`` / ``teacher_shapes`` (from ``taps.probe_shapes``) validate the pairs
    before training and let fitnet build its regressors now. ``options`` are method options by name
    (``red_alpha``, ``red_distance``, ``kd_temperature``, ``fitnet_weight``, ...); an option set to
    ``None`` counts as not given, so unset CLI flags may be passed through. An option no component
    accepts raises one line naming it and the accepted ones.
    """
    spec = parse_distiller(name)
    given = {k: v for k, v in options.items() if v is not None}
    _reject_options_not_taken(name, given, spec.options)
    pairs = list(pairs)
    components = []
    for cls in spec.classes:
        own = {k: v for k, v in given.items() if k in option_defaults(cls)}
        components.append(
            cls(pairs=pairs, student_shapes=student_shapes, teacher_shapes=teacher_shapes, **own)
        )
    return components[0] if len(components) == 1 else CompositeDistiller(components)


def _reject_options_not_taken(name: str, given: Mapping[str, Any], accepted: Mapping[str, Any]) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        hint = ", ".join(sorted(accepted)) or "none"
        raise ValueError(
            f"Distiller {name!r} does not take option(s) {', '.join(unknown)}; it accepts: {hint}."
        )


def distillation_options(name: str, values: Mapping[str, Any] | Any) -> dict[str, Any]:
    """The options for ``name`` out of ``values`` (a mapping, or an object such as the parsed
    `config.DistillationArguments` whose attributes are read): the one routing of option flags.

    Every registered method option is read; ``None`` means unset. An option the method does not
    take raises one line naming it and the accepted ones (as `build_distiller` does), unless it is
    at its own method's default: a recipe written for one method may state that method's defaults
    (the paper recipe's ``red_alpha: 1.0``) and still run with ``--distiller output_mse``. Call it
    before loading models to fail early; the result goes to `build_distiller` / `build_model_distiller`.
    """
    accepted = distiller_options(name)
    defaults = all_distiller_options()
    if isinstance(values, Mapping):
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise ValueError(
                f"Unknown distillation option(s) {', '.join(unknown)}; options are: {', '.join(sorted(defaults))}."
            )
        read = dict(values)
    else:
        read = {k: getattr(values, k) for k in defaults if hasattr(values, k)}
    given = {k: v for k, v in read.items() if v is not None and (k in accepted or v != defaults[k])}
    _reject_options_not_taken(name, given, accepted)
    return given


def build_model_distiller(
    name: str,
    student: nn.Module,
    teacher: nn.Module | None,
    pairs: Sequence[Pair],
    example_inputs: Callable[[nn.Module], tuple[tuple, dict]],
    options: Mapping[str, Any] | None = None,
) -> Distiller:
    """The one builder of both tasks: (name, student, teacher, pairs, options) -> a checked distiller.

    ``pairs`` are (student tap, teacher tap) in module terms (``"conv_in:output"``); a student tap
    that carries a RED block is read at the block's output (`red.red_loss_pairs`). The pairs are
    probed once on both models (``example_inputs(model) -> (args, kwargs)`` for one forward pass)
    so unknown taps, mismatched sizes and FitNet's regressor shapes fail here, before training.
    Checks, each in one line: the method exists; its options (see `build_distiller`); a method that
    uses RED blocks finds them in the student; a method that needs a teacher has one; a feature
    method has pairs.
    """
    spec = parse_distiller(name)
    if spec.uses_red_blocks and not len(getattr(student, RED_BLOCKS_ATTRIBUTE, None) or ()):
        raise ValueError(
            f"Distiller {name!r} needs RED blocks in the student: place them (a UNet student: --red_preset "
            "paper|full or --distill_pairs; a classifier: create_student(..., red_placement='paper'))."
        )
    if spec.requires_teacher and teacher is None:
        raise ValueError(f"Distiller {name!r} needs a teacher: pass --teacher_model_name_or_path.")
    loss_pairs: list[Pair] = []
    student_shapes = teacher_shapes = None
    if spec.uses_pairs:
        if not pairs:
            raise ValueError(
                f"Distiller {name!r} compares features and needs (student tap, teacher tap) pairs: a RED "
                "placement preset or explicit pairs."
            )
        loss_pairs = red_loss_pairs(student, pairs)
        args, kwargs = example_inputs(student)
        student_shapes = probe_shapes(student, [s for s, _ in loss_pairs], *args, **kwargs)
        args, kwargs = example_inputs(teacher)
        teacher_shapes = probe_shapes(teacher, [t for _, t in loss_pairs], *args, **kwargs)
    return build_distiller(
        spec.name,
        pairs=loss_pairs,
        student_shapes=student_shapes,
        teacher_shapes=teacher_shapes,
        **dict(options or {}),
    )
