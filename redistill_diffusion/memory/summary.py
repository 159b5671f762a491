"""Teacher vs student peak memory in each convention: the one schema of every file and card that reports it.

``memory_report.json`` (diffusion), ``results.json``'s ``peak_memory`` (classification) and
``redistill memory --json`` all hold ``{convention: PeakComparison.to_dict()}``, the object ``compare``
returns; ``MemorySummary.from_dict`` also reads the flat dictionaries earlier versions wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from .api import CONVENTIONS, ModelInputs, measure_peak_memory
from .report import MB, MemoryReport

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolution_of(input_shape: Sequence[int]) -> int | list[int] | None:
    """The H x W of an image input shape: an int when square (the paper's single-number resolution)."""
    if len(input_shape) < 2:
        return None  # a comparison read back from an earlier flat summary has no shape
    height, width = int(input_shape[-2]), int(input_shape[-1])
    return height if height == width else [height, width]


def _report_from_flat(data: Mapping[str, Any], role: str, convention: str) -> MemoryReport:
    """A report holding only the peak, from the flat keys earlier summaries wrote
    (``teacher_peak_bytes`` or, in cards and quickstart summaries, ``teacher_mb``)."""
    peak_bytes = data.get(f"{role}_peak_bytes")
    if peak_bytes is None:
        peak_bytes = round(float(data[f"{role}_mb"]) * MB)
    return MemoryReport(
        convention=convention,
        model=role,
        input_shape=(),
        peak_bytes=int(peak_bytes),
        peak_layer="",
        layers=[],
    )


@dataclass(frozen=True)
class PeakComparison:
    """Teacher vs student peak activation memory in one convention."""

    teacher: MemoryReport
    student: MemoryReport

    def __post_init__(self) -> None:
        if self.teacher.convention != self.student.convention:
            raise ValueError(
                f"Teacher and student were measured with different conventions "
                f"({self.teacher.convention} vs {self.student.convention})."
            )

    @classmethod
    def measure(
        cls, teacher: nn.Module, student: nn.Module, input_shape: Sequence[int] | None = None, **options: Any
    ) -> PeakComparison:
        """Both models measured on the same input; ``options`` as ``measure_peak_memory`` takes them."""
        return cls(*(measure_peak_memory(model, input_shape, **options) for model in (teacher, student)))

    @property
    def convention(self) -> str:
        return self.teacher.convention

    @property
    def ratio(self) -> float:
        """How many times lower the student's peak is."""
        return self.teacher.peak_bytes / self.student.peak_bytes if self.student.peak_bytes else float("inf")

    def describe(self, student_label: str = "student") -> str:
        """One line: ``teacher 3.500 MB -> student 0.875 MB (4.00x)``."""
        return (
            f"teacher {self.teacher.peak_mb:.3f} MB -> {student_label} {self.student.peak_mb:.3f} MB "
            f"({self.ratio:.2f}x)"
        )

    def to_dict(self, include_layers: bool = True) -> dict[str, Any]:
        """The JSON contract: ``{"convention", "resolution", "teacher": {...}, "student": {...}, "ratio"}``."""
        return {
            "convention": self.convention,
            "resolution": resolution_of(self.teacher.input_shape),
            "teacher": self.teacher.to_dict(include_layers),
            "student": self.student.to_dict(include_layers),
            "ratio": self.ratio,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], convention: str | None = None) -> PeakComparison:
        """Reads ``to_dict``'s output and the flat entries of earlier versions (``teacher_peak_bytes``,
        ``student_peak_bytes`` / ``teacher_mb``, ``student_mb``, ``ratio``)."""
        convention = data.get("convention") or convention
        if convention is None:
            raise ValueError("a peak-memory comparison without its convention")
        if isinstance(data.get("teacher"), Mapping):
            return cls(
                MemoryReport.from_dict(data["teacher"], convention),
                MemoryReport.from_dict(data["student"], convention),
            )
        return cls(
            _report_from_flat(data, "teacher", convention), _report_from_flat(data, "student", convention)
        )


def _each_convention(
    conventions: Sequence[str], measure: Callable[[str], T], what: str, strict: bool
) -> dict[str, T]:
    """``measure(convention)`` for each convention. Unless ``strict``, one that cannot be measured (a model
    family with no paper convention, say) is a warning: a report we cannot make must not lose a trained model
    or an evaluation."""
    results: dict[str, T] = {}
    for convention in conventions:
        try:
            results[convention] = measure(convention)
        except Exception as error:  # noqa: BLE001 - see the docstring
            if strict:
                raise
            logger.warning("Peak memory of %s (%s convention) not measured: %s", what, convention, error)
    return results


def measure_conventions(
    model: nn.Module, input_shape: Sequence[int], *, conventions: Sequence[str] = CONVENTIONS
) -> dict[str, MemoryReport]:
    """One model's report in each convention it can be measured in (the others are a warning each)."""
    return _each_convention(
        conventions,
        lambda convention: measure_peak_memory(model, input_shape, convention=convention),
        type(model).__name__,
        strict=False,
    )


@dataclass
class MemorySummary:
    """Teacher vs student peak memory in each convention measured, in the order measured."""

    comparisons: dict[str, PeakComparison] = field(default_factory=dict)

    @classmethod
    def measure(
        cls,
        teacher: nn.Module,
        student: nn.Module,
        input_shape: Sequence[int],
        *,
        conventions: Sequence[str] = CONVENTIONS,
        batch_size: int = 1,
        strict: bool = False,
    ) -> MemorySummary:
        """Both models in each convention. ``strict=False`` (training): a convention that cannot be measured
        is left out with a warning; ``strict=True`` (``redistill memory``): its error is raised."""
        return cls(
            _each_convention(
                conventions,
                lambda convention: PeakComparison.measure(
                    teacher, student, input_shape, convention=convention, batch_size=batch_size
                ),
                "teacher and student",
                strict,
            )
        )

    def __iter__(self) -> Iterator[PeakComparison]:
        return iter(self.comparisons.values())

    def __len__(self) -> int:
        return len(self.comparisons)

    def __contains__(self, convention: object) -> bool:
        return convention in self.comparisons

    def __getitem__(self, convention: str) -> PeakComparison:
        return self.comparisons[convention]

    def pairs(self) -> list[tuple[MemoryReport, MemoryReport]]:
        """(teacher, student) reports per convention, as ``plot_memory_per_layer`` takes them."""
        return [(comparison.teacher, comparison.student) for comparison in self]

    def to_dict(self, include_layers: bool = False) -> dict[str, dict[str, Any]]:
        """``{convention: PeakComparison.to_dict()}``: memory_report.json and results.json's peak_memory."""
        return {name: comparison.to_dict(include_layers) for name, comparison in self.comparisons.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MemorySummary:
        """Reads ``to_dict``'s output and what earlier versions wrote: ``redistill memory``'s single-convention
        object, results.json's flat entries, the cards' ``{"convention", ..., "all": {...}}``; keys that are
        no convention (``runtimes``) are passed over."""
        if not data:
            return cls()
        if isinstance(data.get("all"), Mapping):
            return cls.from_dict(data["all"])
        if "convention" in data:
            comparison = PeakComparison.from_dict(data)
            return cls({comparison.convention: comparison})
        return cls(
            {
                name: PeakComparison.from_dict(entry, name)
                for name, entry in data.items()
                if name in CONVENTIONS and isinstance(entry, Mapping)
            }
        )

    def format(self) -> str:
        """One line per convention: teacher MB, student MB, ratio and where each peak is."""
        lines = [
            f"{'convention':<11} {'teacher MB':>11} {'student MB':>11} {'ratio':>7}  "
            "teacher peak in / student peak in"
        ]
        for comparison in self:
            teacher, student = comparison.teacher, comparison.student
            lines.append(
                f"{comparison.convention:<11} {teacher.peak_mb:>11.4f} {student.peak_mb:>11.4f} "
                f"{comparison.ratio:>6.2f}x  {teacher.peak_layer} / {student.peak_layer}"
            )
        return "\n".join(lines)


def compare(
    teacher: nn.Module,
    student: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    inputs: ModelInputs | None = None,
    convention: str = "exact",
    batch_size: int = 1,
    include_layers: bool = True,
) -> dict[str, Any]:
    """Teacher vs student peak memory as ``redistill memory --json`` writes it:
    ``{"convention", "resolution", "teacher": {...}, "student": {...}, "ratio"}``."""
    return PeakComparison.measure(
        teacher, student, input_shape, inputs=inputs, convention=convention, batch_size=batch_size
    ).to_dict(include_layers)
