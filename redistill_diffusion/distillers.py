"""Every distillation method behind one interface, so the trainer knows nothing of a particular method.

A :class:`Distiller` takes the student's and the (frozen) teacher's outputs and tapped features and
returns a dict of named, already-weighted losses; their sum is the distillation term. The trainer
combines ``(1 - distill_weight) * task_loss + distill_weight * sum(losses.values())`` and logs each
name. Outputs are noise predictions (B x C x H x W) for diffusion and logits (B x K) for
classification; feature dicts are keyed by normalised taps (``"module:output"`` / ``"module:input"``).

Methods (``build_distiller(name, ...)``): ``vanilla``, ``student_plus``, ``output_mse``, ``fitnet``,
``at``, ``red``, ``kd``, ``dkd``, and composites such as ``red+output_mse`` or ``red+kd`` whose
term is the average of their components (docs/architecture.md, "Distiller interface").

A method's options are the fields of its ``Options`` dataclass (`REDOptions`, `KDOptions`, ...), named
after the method (``red_alpha``, ``kd_temperature``) and with their defaults; the method reads its
values from it, `distiller_options` lists them, and the builders pass a method only the options it
takes, so the CLI flags, the builder and the methods cannot disagree. `build_model_distiller` is the one path from (name, student, teacher, pairs,
options) to a distiller that both tasks use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .red import RED_BLOCKS_ATTRIBUTE, RED_DISTANCES, red_distance, red_loss_pairs
from .taps import check_pairs, normalize_tap, probe_shapes, tap_to_key

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


# --- methods that do not use the teacher ---------------------------------------------------------


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


# --- response (output) methods --------------------------------------------------------------------


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


# --- feature methods --------------------------------------------------------------------------------


@dataclass(frozen=True)
class REDOptions:
    red_alpha: float | Sequence[float] = 1.0  # weight of each pair's RED loss (one for all, or one per pair)
    red_distance: str = "cosine"  # between channel-mean maps: cosine or mse


@register_distiller
class REDDistiller(Distiller):
    """The ReDistill loss (the paper's RED loss; `red.red_distance`): mean over pairs of
    alpha_i * red_distance(s_i, t_i).

    Student taps are the features after the RED blocks (``"red_blocks.<key>:output"``,
    `red.red_feature_tap`); the
    distance compares channel-mean maps, so channel counts may differ, spatial sizes may not.
    ``red_alpha`` is one float for every pair or one float per pair.
    """

    name = "red"
    uses_pairs = True
    uses_red_blocks = True
    Options = REDOptions

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(pairs)
        check_pairs(self.pairs, student_shapes, teacher_shapes, same_resolution=True, name=self.name)
        options = self.Options(**options)
        red_alpha, red_distance = options.red_alpha, options.red_distance
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


@dataclass(frozen=True)
class FitNetOptions:
    fitnet_weight: float = 1.0  # scale of the hint loss


@register_distiller
class FitNetDistiller(Distiller):
    """FitNets hints (Romero et al. 2015): mse(regressor(s), t), mean over pairs, times ``fitnet_weight``.

    One learned 1x1 conv per pair maps student channels to teacher channels. It is built here from the
    probed shapes, so it exists before the optimizer is created; the trainer optimises it with the student.
    """

    name = "fitnet"
    uses_pairs = True
    Options = FitNetOptions

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(pairs)
        fitnet_weight = self.Options(**options).fitnet_weight
        student_shapes, teacher_shapes = _normalize_shapes(student_shapes), _normalize_shapes(teacher_shapes)
        if student_shapes is None or teacher_shapes is None:
            raise ValueError(
                "fitnet builds its regressors from feature shapes: pass student_shapes and teacher_shapes "
                "(taps.probe_shapes on the student and the teacher)."
            )
        check_pairs(self.pairs, student_shapes, teacher_shapes, same_resolution=True, name=self.name)
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


@dataclass(frozen=True)
class ATOptions:
    at_weight: float = 1000.0  # the paper's beta
    at_p: float = 2.0  # exponent of the attention map


@register_distiller
class ATDistiller(Distiller):
    """Attention transfer (Zagoruyko & Komodakis 2017): mean over pairs of mse(att(s), att(t)), times ``at_weight``.

    Channel counts may differ. When spatial sizes differ (we normally pair same-resolution taps)
    the larger map is average-pooled to the smaller size. ``at_weight`` 1000 is the paper's beta.
    """

    name = "at"
    uses_pairs = True
    Options = ATOptions

    def __init__(self, pairs: Iterable[Pair] = (), student_shapes=None, teacher_shapes=None, **options):
        super().__init__(pairs)
        check_pairs(self.pairs, student_shapes, teacher_shapes, same_resolution=False, name=self.name)
        options = self.Options(**options)
        self.weight = _non_negative("at_weight", options.at_weight)
        self.p = _positive("at_p", options.at_p)

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


__all__ = [
    "ATDistiller",
    "ATOptions",
    "CompositeDistiller",
    "DKDDistiller",
    "DKDOptions",
    "Distiller",
    "DistillerSpec",
    "FitNetDistiller",
    "FitNetOptions",
    "KDDistiller",
    "KDOptions",
    "NoOptions",
    "OutputMSEDistiller",
    "OutputMSEOptions",
    "REDDistiller",
    "REDOptions",
    "StudentPlusDistiller",
    "VanillaDistiller",
    "all_distiller_options",
    "attention_map",
    "available_distillers",
    "build_distiller",
    "build_model_distiller",
    "distillation_options",
    "distiller_options",
    "option_defaults",
    "parse_distiller",
    "register_distiller",
]
