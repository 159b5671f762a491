"""Response (output) methods: `output_mse`, `kd` (Hinton) and `dkd` (decoupled KD)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Distiller, Pair, _check_same_shape, _non_negative, _positive, register_distiller


@dataclass(frozen=True)
class OutputMSEOptions:
    output_mse_weight: float = 1.0  # scale of the output mse


@register_distiller
class OutputMSEDistiller(Distiller):
    """Response distillation: mse between student and teacher outputs (noise predictions for DDPM)."""

    name = "output_mse"
    Options = OutputMSEOptions

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(())  # compares outputs only
        options = self.Options(**options)
        self.weight = _non_negative("output_mse_weight", options.output_mse_weight)

    def forward(
        self, *, student_output, teacher_output, student_features=None, teacher_features=None, target=None
    ):
        _check_same_shape(self.name, student_output, teacher_output)
        return {
            "output_mse": self.weight * F.mse_loss(student_output.float(), teacher_output.detach().float())
        }


def _check_logits(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    _check_same_shape(name, student, teacher)
    if student.ndim != 2:
        raise ValueError(
            f"{name} compares class logits (B x K); got outputs of shape {tuple(student.shape)}."
        )


@dataclass(frozen=True)
class KDOptions:
    kd_temperature: float = 2.0  # softmax temperature T
    kd_weight: float = 1.0  # scale of the KD term


@register_distiller
class KDDistiller(Distiller):
    """Hinton knowledge distillation: KL(p_t || p_s) on temperature-softened logits, times T^2.

    p = softmax(z / T); mean over the batch (``batchmean``), as in Hinton et al. 2015 (default T = 2).
    """

    name = "kd"
    Options = KDOptions

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(())
        options = self.Options(**options)
        self.temperature = _positive("kd_temperature", options.kd_temperature)
        self.weight = _non_negative("kd_weight", options.kd_weight)

    def forward(
        self, *, student_output, teacher_output, student_features=None, teacher_features=None, target=None
    ):
        _check_logits(self.name, student_output, teacher_output)
        T = self.temperature
        log_p_s = F.log_softmax(student_output.float() / T, dim=1)
        log_p_t = F.log_softmax(teacher_output.detach().float() / T, dim=1)
        kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
        return {"kd": self.weight * kl * T**2}


def _hard_labels(name: str, target: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    if target is None:
        raise ValueError(
            f"{name} needs the ground-truth labels: pass target=<class indices> to the distiller."
        )
    if target.ndim == 2 and target.shape == logits.shape:  # soft / one-hot targets (mixup, cutmix)
        target = target.argmax(dim=1)
    if target.ndim != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name}: target must hold one class index per sample, got shape {tuple(target.shape)}."
        )
    return target.long()


@dataclass(frozen=True)
class DKDOptions:
    dkd_alpha: float = 1.0  # weight of TCKD
    dkd_beta: float = 8.0  # weight of NCKD
    dkd_temperature: float = 4.0  # softmax temperature T


@register_distiller
class DKDDistiller(Distiller):
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, each times T^2.

    TCKD is the KL between the binary (target, non-target) distributions; NCKD the KL between the
    distributions over the non-target classes only. Defaults alpha 1, beta 8, T 4 (the paper's CIFAR
    setting). The paper's loss warm-up over the first epochs is the trainer's schedule, not done here.
    """

    name = "dkd"
    requires_target = True
    Options = DKDOptions

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(())
        options = self.Options(**options)
        self.alpha = _non_negative("dkd_alpha", options.dkd_alpha)
        self.beta = _non_negative("dkd_beta", options.dkd_beta)
        self.temperature = _positive("dkd_temperature", options.dkd_temperature)

    @staticmethod
    def _binary_and_non_target(logits: torch.Tensor, target_mask: torch.Tensor):
        """log [p_target, p_non_target] (B x 2) and log-softmax over the non-target logits (B x K-1)."""
        log_all = torch.logsumexp(logits, dim=1, keepdim=True)
        target_logit = logits[target_mask].unsqueeze(1)
        others = logits[~target_mask].view(logits.shape[0], -1)
        log_binary = torch.cat([target_logit, torch.logsumexp(others, dim=1, keepdim=True)], dim=1) - log_all
        return log_binary, F.log_softmax(others, dim=1)

    def forward(
        self, *, student_output, teacher_output, student_features=None, teacher_features=None, target=None
    ):
        _check_logits(self.name, student_output, teacher_output)
        if student_output.shape[1] < 2:
            raise ValueError(
                f"dkd needs at least 2 classes, got logits of shape {tuple(student_output.shape)}."
            )
        labels = _hard_labels(self.name, target, student_output)
        T = self.temperature
        mask = F.one_hot(labels, num_classes=student_output.shape[1]).bool()
        s_bin, s_nt = self._binary_and_non_target(student_output.float() / T, mask)
        t_bin, t_nt = self._binary_and_non_target(teacher_output.detach().float() / T, mask)
        tckd = F.kl_div(s_bin, t_bin, reduction="batchmean", log_target=True) * T**2
        nckd = F.kl_div(s_nt, t_nt, reduction="batchmean", log_target=True) * T**2
        return {"dkd_tckd": self.alpha * tckd, "dkd_nckd": self.beta * nckd}
