"""The one place where a task loss and distillation losses become the optimised total."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch


class NonFiniteLossError(ValueError):
    """Raised when the total loss is NaN or infinite (the message names the usual fixes)."""


def combine_losses(
    task_loss: torch.Tensor,
    distillation: Mapping[str, torch.Tensor],
    distill_weight: float,
    task_weight: float | None = None,
) -> torch.Tensor:
    """``(1 - a) * task + a * sum(distillation)`` (the paper: objectives), or ``task`` alone when the
    distiller returned no loss (vanilla student, plain teacher training).

    ``task_weight`` (``--task_weight``), when given, replaces the task loss's weight in both cases: a
    plain student trained at ``task_weight=0.5`` gets the same task gradient as a distiller at the
    default ``a = 0.5``, so comparing the two isolates what the distillation term adds."""
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must lie in [0, 1], got {distill_weight}.")
    if task_weight is not None and not (math.isfinite(task_weight) and task_weight > 0):
        raise ValueError(f"task_weight must be a positive number, got {task_weight}.")
    if not distillation:
        return task_loss if task_weight is None else task_weight * task_loss.float()
    distill = torch.stack([loss.float() for loss in distillation.values()]).sum()
    weight = 1.0 - distill_weight if task_weight is None else task_weight
    return weight * task_loss.float() + distill_weight * distill


def check_finite(total: torch.Tensor, named: Mapping[str, torch.Tensor], step: int) -> None:
    """Stop at once with one line naming the culprit and the fix, instead of training on NaNs."""
    if torch.isfinite(total).all():
        return
    bad = [name for name, value in named.items() if not torch.isfinite(value).all()]
    raise NonFiniteLossError(
        f"Loss became {total.item()} at step {step} (non-finite: {', '.join(bad) or 'total'}); "
        "lower --learning_rate, keep --max_grad_norm 1.0, use --mixed_precision no or bf16 (not fp16), "
        "or resume from an earlier checkpoint with --resume_from_checkpoint."
    )
