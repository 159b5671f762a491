"""Every distillation method behind one interface, so the trainer knows nothing of a particular method.

A :class:`Distiller` takes the student's and the (frozen) teacher's outputs and tapped features and
returns a dict of named, already-weighted losses; their sum is the distillation term. The trainer
combines ``(1 - distill_weight) * task_loss + distill_weight * sum(losses.values())`` and logs each
name. Outputs are noise predictions (B x C x H x W) for diffusion and logits (B x K) for
classification; feature dicts are keyed by normalised taps (``"module:output"`` / ``"module:input"``).

Methods (``build_distiller(name, ...)``): ``vanilla``, ``student_plus``, ``output_mse``, ``fitnet``,
``at``, ``red``, ``kd``, ``dkd``, and composites such as ``red+output_mse`` or ``red+kd`` whose
term is the average of their components (method.md section 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .red import RED_DISTANCES, red_distance, tap_to_key
from .taps import normalize_tap

Pair = tuple[str, str]
Shapes = Mapping[str, Sequence[int]]

_DISTILLERS: dict[str, type[Distiller]] = {}


def register_distiller(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a Distiller subclass available to :func:`build_distiller` under ``cls.name``.

    The builder calls ``cls(pairs=..., student_shapes=..., teacher_shapes=..., **options)`` with only
    the options listed in ``cls.option_defaults`` (prefix them with the method name: ``kd_temperature``).
    """
    if not cls.name or "+" in cls.name:
        raise ValueError(f"Distiller {cls.__name__} needs a name without '+'.")
    _DISTILLERS[cls.name] = cls
    return cls


def available_distillers() -> tuple[str, ...]:
    """Names accepted by :func:`build_distiller` (composites join them with '+')."""
    return tuple(_DISTILLERS)


class Distiller(nn.Module):
    """Base class: one distillation method.

    Subclasses set ``name``, ``requires_teacher`` (False: the trainer need not run the teacher),
    ``requires_target`` (True: ``forward`` needs the ground-truth labels), ``uses_pairs`` (True:
    the method compares tapped features and needs at least one (student_tap, teacher_tap) pair)
    and ``option_defaults`` (the keyword options it accepts, with their defaults).
    """

    name: ClassVar[str] = ""
    requires_teacher: bool = True
    requires_target: bool = False
    uses_pairs: ClassVar[bool] = False
    option_defaults: ClassVar[dict[str, Any]] = {}

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


def _check_pair_shapes(
    name: str,
    pairs: Sequence[Pair],
    student_shapes: dict[str, tuple[int, ...]] | None,
    teacher_shapes: dict[str, tuple[int, ...]] | None,
    same_resolution: bool,
) -> None:
    """Validate pairs against probed shapes before training starts (only the shapes that were given)."""
    for s_tap, t_tap in pairs:
        if student_shapes is not None and s_tap not in student_shapes:
            raise ValueError(
                f"{name}: unknown student tap {s_tap!r}; probed taps are {sorted(student_shapes)}."
            )
        if teacher_shapes is not None and t_tap not in teacher_shapes:
            raise ValueError(
                f"{name}: unknown teacher tap {t_tap!r}; probed taps are {sorted(teacher_shapes)}."
            )
        if same_resolution and student_shapes is not None and teacher_shapes is not None:
            s_hw, t_hw = student_shapes[s_tap][-2:], teacher_shapes[t_tap][-2:]
            if s_hw != t_hw:
                raise ValueError(
                    f"{name}: pair {s_tap} <-> {t_tap} has different spatial sizes ({s_hw} vs {t_hw}); "
                    "pair features of the same resolution."
                )


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


# --- methods that do not use the teacher ---------------------------------------------------------


@register_distiller
class VanillaDistiller(Distiller):
    """The student trained on the task loss alone (no teacher, no distillation term)."""

    name = "vanilla"
    requires_teacher = False

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None):
        super().__init__(())  # pairs are irrelevant without a teacher

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


# --- response (output) methods --------------------------------------------------------------------


@register_distiller
class OutputMSEDistiller(Distiller):
    """Response distillation: mse between student and teacher outputs (noise predictions for DDPM)."""

    name = "output_mse"
    option_defaults = {"output_mse_weight": 1.0}

    def __init__(
        self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, output_mse_weight=1.0
    ):
        super().__init__(())  # compares outputs only
        self.weight = _non_negative("output_mse_weight", output_mse_weight)

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


@register_distiller
class KDDistiller(Distiller):
    """Hinton knowledge distillation: KL(p_t || p_s) on temperature-softened logits, times T^2.

    p = softmax(z / T); mean over the batch (``batchmean``), as in Hinton et al. 2015 and method.md
    section 5 (T = 2).
    """

    name = "kd"
    option_defaults = {"kd_temperature": 2.0, "kd_weight": 1.0}

    def __init__(
        self,
        pairs: Iterable[Pair] = (),
        student_shapes=None,
        teacher_shapes=None,
        kd_temperature=2.0,
        kd_weight=1.0,
    ):
        super().__init__(())
        self.temperature = _positive("kd_temperature", kd_temperature)
        self.weight = _non_negative("kd_weight", kd_weight)

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


@register_distiller
class DKDDistiller(Distiller):
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, each times T^2.

    TCKD is the KL between the binary (target, non-target) distributions; NCKD the KL between the
    distributions over the non-target classes only. Defaults alpha 1, beta 8, T 4 (the paper's CIFAR
    setting). The paper's loss warm-up over the first epochs is the trainer's schedule, not done here.
    """

    name = "dkd"
    requires_target = True
    option_defaults = {"dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_temperature": 4.0}

    def __init__(
        self,
        pairs: Iterable[Pair] = (),
        student_shapes=None,
        teacher_shapes=None,
        dkd_alpha=1.0,
        dkd_beta=8.0,
        dkd_temperature=4.0,
    ):
        super().__init__(())
        self.alpha = _non_negative("dkd_alpha", dkd_alpha)
        self.beta = _non_negative("dkd_beta", dkd_beta)
        self.temperature = _positive("dkd_temperature", dkd_temperature)

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


# --- feature methods --------------------------------------------------------------------------------


@register_distiller
class REDDistiller(Distiller):
    """The ReDistill loss (method.md section 3): mean over pairs of alpha_i * red_distance(s_i, t_i).

    Student taps are the features after the RED blocks (e.g. ``"red_blocks.<key>:output"``); the
    distance compares channel-mean maps, so channel counts may differ, spatial sizes may not.
    ``red_alpha`` is one float for every pair or one float per pair.
    """

    name = "red"
    uses_pairs = True
    option_defaults = {"red_alpha": 1.0, "red_distance": "cosine"}

    def __init__(
        self,
        pairs: Iterable[Pair] = (),
        student_shapes=None,
        teacher_shapes=None,
        red_alpha=1.0,
        red_distance="cosine",
    ):
        super().__init__(pairs)
        _check_pair_shapes(
            self.name, self.pairs, _normalize_shapes(student_shapes), _normalize_shapes(teacher_shapes), True
        )
        if red_distance not in RED_DISTANCES:
            raise ValueError(
                f"Unknown red_distance {red_distance!r}; choose one of {', '.join(RED_DISTANCES)}."
            )
        self.distance = red_distance
        if isinstance(red_alpha, (int, float)):
            alphas = [float(red_alpha)] * len(self.pairs)
        else:
            alphas = [float(a) for a in red_alpha]
            if len(alphas) != len(self.pairs):
                raise ValueError(
                    f"red_alpha lists {len(alphas)} values for {len(self.pairs)} pairs; give one per pair or a single float."
                )
        self.alphas = [_non_negative("red_alpha", a) for a in alphas]

    def forward(
        self, *, student_output=None, teacher_output=None, student_features, teacher_features, target=None
    ):
        terms = [
            alpha * red_distance(s, t, self.distance)
            for alpha, (_, _, s, t) in zip(
                self.alphas, self._paired_features(student_features, teacher_features)
            )
        ]
        return {"red": torch.stack(terms).mean()}

    def extra_repr(self) -> str:
        return f"distance={self.distance!r}, alphas={self.alphas}, pairs={self.pairs}"


@register_distiller
class FitNetDistiller(Distiller):
    """FitNets hints (Romero et al. 2015): mse(regressor(s), t), mean over pairs, times ``fitnet_weight``.

    One learned 1x1 conv per pair maps student channels to teacher channels. It is built here from the
    probed shapes, so it exists before the optimizer is created; the trainer optimises it with the student.
    """

    name = "fitnet"
    uses_pairs = True
    option_defaults = {"fitnet_weight": 1.0}

    def __init__(
        self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, fitnet_weight=1.0
    ):
        super().__init__(pairs)
        student_shapes, teacher_shapes = _normalize_shapes(student_shapes), _normalize_shapes(teacher_shapes)
        if student_shapes is None or teacher_shapes is None:
            raise ValueError(
                "fitnet builds its regressors from feature shapes: pass student_shapes and teacher_shapes "
                "(taps.probe_shapes on the student and the teacher)."
            )
        _check_pair_shapes(self.name, self.pairs, student_shapes, teacher_shapes, True)
        self.weight = _non_negative("fitnet_weight", fitnet_weight)
        self.regressors = nn.ModuleDict()
        for s_tap, t_tap in self.pairs:
            s_shape, t_shape = student_shapes[s_tap], teacher_shapes[t_tap]
            if len(s_shape) != 4 or len(t_shape) != 4:
                raise ValueError(
                    f"fitnet: pair {s_tap} <-> {t_tap} needs B x C x H x W features, got {s_shape} and {t_shape}."
                )
            self.regressors[self._key(s_tap, t_tap)] = nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1)

    @staticmethod
    def _key(s_tap: str, t_tap: str) -> str:
        return f"{tap_to_key(s_tap)}__to__{tap_to_key(t_tap)}"

    def forward(
        self, *, student_output=None, teacher_output=None, student_features, teacher_features, target=None
    ):
        terms = []
        for s_tap, t_tap, s, t in self._paired_features(student_features, teacher_features):
            if s.shape[-2:] != t.shape[-2:]:
                raise ValueError(
                    f"fitnet: pair {s_tap} <-> {t_tap} has different spatial sizes ({tuple(s.shape[-2:])} vs {tuple(t.shape[-2:])})."
                )
            regressor = self.regressors[self._key(s_tap, t_tap)]
            terms.append(F.mse_loss(regressor(s.to(regressor.weight.dtype)).float(), t.float()))
        return {"fitnet": self.weight * torch.stack(terms).mean()}


def attention_map(x: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko & Komodakis spatial attention: L2-normalised mean over channels of |x|^p, B x (H*W)."""
    return F.normalize(x.float().abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_distiller
class ATDistiller(Distiller):
    """Attention transfer (Zagoruyko & Komodakis 2017): mean over pairs of mse(att(s), att(t)), times ``at_weight``.

    Channel counts may differ. When spatial sizes differ (we normally pair same-resolution taps)
    the larger map is average-pooled to the smaller size. ``at_weight`` 1000 is the paper's beta.
    """

    name = "at"
    uses_pairs = True
    option_defaults = {"at_weight": 1000.0, "at_p": 2.0}

    def __init__(
        self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, at_weight=1000.0, at_p=2.0
    ):
        super().__init__(pairs)
        _check_pair_shapes(
            self.name, self.pairs, _normalize_shapes(student_shapes), _normalize_shapes(teacher_shapes), False
        )
        self.weight = _non_negative("at_weight", at_weight)
        self.p = _positive("at_p", at_p)

    def forward(
        self, *, student_output=None, teacher_output=None, student_features, teacher_features, target=None
    ):
        terms = []
        for _, _, s, t in self._paired_features(student_features, teacher_features):
            if s.shape[-2:] != t.shape[-2:]:
                size = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
                s, t = F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)
            terms.append((attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean())
        return {"at": self.weight * torch.stack(terms).mean()}


# --- composites and the builder -------------------------------------------------------------------


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


def _parse_method(name: str) -> list[str]:
    parts = [p.strip().lower() for p in str(name).split("+")]
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
    return parts


def distiller_options(name: str) -> dict[str, Any]:
    """The keyword options a method (or composite) accepts, with their defaults."""
    options: dict[str, Any] = {}
    for part in _parse_method(name):
        options.update(_DISTILLERS[part].option_defaults)
    return options


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
    accepts raises.
    """
    parts = _parse_method(name)
    given = {k: v for k, v in options.items() if v is not None}
    accepted = {opt for part in parts for opt in _DISTILLERS[part].option_defaults}
    unknown = sorted(set(given) - accepted)
    if unknown:
        hint = ", ".join(sorted(accepted)) or "none"
        raise ValueError(
            f"Distiller {name!r} does not take option(s) {', '.join(unknown)}; it accepts: {hint}."
        )
    pairs = list(pairs)
    components = []
    for part in parts:
        cls = _DISTILLERS[part]
        own = {k: v for k, v in given.items() if k in cls.option_defaults}
        components.append(
            cls(pairs=pairs, student_shapes=student_shapes, teacher_shapes=teacher_shapes, **own)
        )
    return components[0] if len(components) == 1 else CompositeDistiller(components)


__all__ = [
    "ATDistiller",
    "CompositeDistiller",
    "DKDDistiller",
    "Distiller",
    "FitNetDistiller",
    "KDDistiller",
    "OutputMSEDistiller",
    "REDDistiller",
    "StudentPlusDistiller",
    "VanillaDistiller",
    "attention_map",
    "available_distillers",
    "build_distiller",
    "distiller_options",
    "register_distiller",
]
