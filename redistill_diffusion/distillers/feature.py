"""Feature methods: `red` (residual encoded distillation), `fitnet` (hint regression), `at` (attention transfer)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..red import RED_DISTANCES, red_distance
from ..taps import check_pairs, tap_to_key
from .base import Distiller, Pair, _non_negative, _normalize_shapes, _positive, register_distiller


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
