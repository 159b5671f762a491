"""Methods that do not use the teacher: `vanilla` (the task loss alone) and `student_plus`."""

from __future__ import annotations

from collections.abc import Iterable

from .base import Distiller, Pair, register_distiller


@register_distiller
class VanillaDistiller(Distiller):
    """The student trained on the task loss alone (no teacher, no distillation term)."""

    name = "vanilla"
    requires_teacher = False

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(())  # pairs are irrelevant without a teacher
        self.Options(**options)

    def forward(
        self,
        *,
        student_output=None,
        teacher_output=None,
        student_features=None,
        teacher_features=None,
        target=None,
    ):
        return {}


@register_distiller
class StudentPlusDistiller(VanillaDistiller):
    """'student+': the student carries RED blocks but gets no distillation loss (alpha 0).

    Isolates the extra capacity of the blocks; the blocks themselves live in the student model.
    """

    name = "student_plus"
    uses_red_blocks = True
