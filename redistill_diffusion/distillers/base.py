"""The interface every method implements (`Distiller`, its `Options`), the registry the builder reads
(`register_distiller`) and the checks the methods share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..taps import normalize_tap

Pair = tuple[str, str]
Shapes = Mapping[str, Sequence[int]]

_DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a Distiller subclass available to :func:`build_distiller` under ``cls.name``.

    The builder calls ``cls(pairs=..., student_shapes=..., teacher_shapes=..., **options)`` with only
    the options its ``Options`` dataclass declares (fields with defaults, prefixed with the method
    name: ``kd_temperature``).
    """
    if not cls.name or "+" in cls.name:
        raise ValueError(f"Distiller {cls.__name__} needs a name without '+'.")
    _DISTILLERS[cls.name] = cls
    return cls


def available_distillers() -> tuple[str, ...]:
    """Names accepted by :func:`build_distiller` (composites join them with '+')."""
    return tuple(_DISTILLERS)


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""


class Distiller(nn.Module):
    """Base class: one distillation method.

    Subclasses set ``name``, ``requires_teacher`` (False: the trainer need not run the teacher),
    ``requires_target`` (True: ``forward`` needs the ground-truth labels), ``uses_pairs`` (True:
    the method compares tapped features and needs at least one (student_tap, teacher_tap) pair)
    and ``uses_red_blocks`` (True: the student carries RED blocks for this method), and ``Options``,
    the dataclass of the method's options; ``__init__`` takes ``pairs``, ``student_shapes``,
    ``teacher_shapes`` and those options by keyword (``self.Options(**options)`` checks them).
    """

    Options: ClassVar[type] = NoOptions
    name: ClassVar[str] = ""
    requires_teacher: bool = True
    requires_target: bool = False
    uses_pairs: ClassVar[bool] = False
    uses_red_blocks: ClassVar[bool] = False

    def __init__(self, pairs: Iterable[Pair] = ()):
        super().__init__()
        self.pairs: list[Pair] = [(normalize_tap(s), normalize_tap(t)) for s, t in pairs]
        if self.uses_pairs and not self.pairs:
            raise ValueError(
                f"Distiller {self.name!r} compares features and needs at least one (student_tap, teacher_tap) pair."
            )

    def student_taps(self) -> list[str]:
        """Student taps the trainer must capture (normalised, in pair order, without duplicates)."""
        return list(dict.fromkeys(s for s, _ in self.pairs)) if self.uses_pairs else []

    def teacher_taps(self) -> list[str]:
        """Teacher taps the trainer must capture (normalised, in pair order, without duplicates)."""
        return list(dict.fromkeys(t for _, t in self.pairs)) if self.uses_pairs else []

    def forward(
        self,
        *,
        student_output: torch.Tensor | None,
        teacher_output: torch.Tensor | None,
        student_features: Mapping[str, torch.Tensor],
        teacher_features: Mapping[str, torch.Tensor],
        target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # Helpers shared by the feature methods.
    def _paired_features(
        self, student_features: Mapping[str, torch.Tensor], teacher_features: Mapping[str, torch.Tensor]
    ) -> list[tuple[str, str, torch.Tensor, torch.Tensor]]:
        """(student_tap, teacher_tap, student feature, teacher feature as a constant) for every pair."""
        out = []
        for s_tap, t_tap in self.pairs:
            if s_tap not in student_features:
                raise KeyError(
                    f"{self.name}: student feature {s_tap!r} was not captured (got {sorted(student_features)})."
                )
            if t_tap not in teacher_features:
                raise KeyError(
                    f"{self.name}: teacher feature {t_tap!r} was not captured (got {sorted(teacher_features)})."
                )
            out.append((s_tap, t_tap, student_features[s_tap], teacher_features[t_tap].detach()))
        return out

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}" if self.pairs else ""


def _normalize_shapes(shapes: Shapes | None) -> dict[str, tuple[int, ...]] | None:
    return None if shapes is None else {normalize_tap(k): tuple(v) for k, v in shapes.items()}


def _positive(name: str, value: Any) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}.")
    return value


def _non_negative(name: str, value: Any) -> float:
    value = float(value)
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}.")
    return value


def _check_same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ in shape."
        )
