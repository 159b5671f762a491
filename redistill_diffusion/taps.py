"""Capture named-module inputs/outputs with hooks, and pair student/teacher taps by resolution."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .red import parse_tap


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    sample = getattr(value, "sample", None)  # diffusers output dataclasses
    return sample if isinstance(sample, torch.Tensor) else None


def normalize_tap(tap: str) -> str:
    module, where = parse_tap(tap)
    return f"{module}:{where}"


class FeatureTaps:
    """Context manager that records the features at the given taps during forward passes.

    ``with FeatureTaps(model, ["conv_in:output"]) as taps: model(x)`` then ``taps.features``
    maps each normalised tap to its tensor. Unknown module names raise before any forward runs.
    """

    def __init__(self, model: nn.Module, taps: Iterable[str], detach: bool = False):
        self.model = model
        self.taps = [normalize_tap(t) for t in taps]
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = dict(model.named_modules())
        for tap in self.taps:
            name, _ = parse_tap(tap)
            if name not in modules:
                raise ValueError(f"Tap {tap!r}: the model has no module named {name!r}.")
        self._modules = modules

    def _store(self, tap: str, value) -> None:
        tensor = _first_tensor(value)
        if tensor is None:
            raise TypeError(f"Tap {tap!r} did not see a tensor (got {type(value).__name__}).")
        self.features[tap] = tensor.detach() if self.detach else tensor

    def __enter__(self) -> FeatureTaps:
        for tap in self.taps:
            name, where = parse_tap(tap)
            module = self._modules[name]
            if where == "output":
                handle = module.register_forward_hook(lambda m, a, out, tap=tap: self._store(tap, out))
            else:
                handle = module.register_forward_pre_hook(
                    lambda m, a, kw, tap=tap: self._store(tap, a if a else tuple(kw.values())),
                    with_kwargs=True,
                )
            self._handles.append(handle)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.features.clear()


@torch.no_grad()
def probe_shapes(model: nn.Module, taps: Iterable[str], *args, **kwargs) -> dict[str, torch.Size]:
    """Run one forward pass and return the shape seen at each tap."""
    with FeatureTaps(model, taps, detach=True) as recorder:
        model(*args, **kwargs)
    missing = [t for t in recorder.taps if t not in recorder.features]
    if missing:
        raise ValueError(f"Taps {missing} were never reached in a forward pass of {type(model).__name__}.")
    return {tap: recorder.features[tap].shape for tap in recorder.taps}


def match_by_resolution(
    student_shapes: dict[str, Sequence[int]], teacher_shapes: dict[str, Sequence[int]]
) -> list[tuple[str, str]]:
    """Pair each student tap with the first teacher tap (in order) of the same H x W.

    Teacher taps are used at most once, in forward order, so a student's ladder of resolutions
    maps onto the teacher's ladder. Student taps with no teacher of that size raise.
    """
    pairs, used = [], set()
    for s_tap, s_shape in student_shapes.items():
        match = next(
            (
                t
                for t, t_shape in teacher_shapes.items()
                if t not in used and tuple(t_shape[-2:]) == tuple(s_shape[-2:])
            ),
            None,
        )
        if match is None:
            raise ValueError(
                f"Student tap {s_tap!r} ({tuple(s_shape[-2:])}) has no unused teacher tap of the same spatial "
                "size; add a teacher tap at that resolution or pair it explicitly."
            )
        used.add(match)
        pairs.append((s_tap, match))
    return pairs


def check_pairs(
    pairs: Iterable[tuple[str, str]],
    student_shapes: dict[str, Sequence[int]],
    teacher_shapes: dict[str, Sequence[int]],
) -> None:
    """Raise one clear error if an explicit pair names an unknown tap or mismatched sizes."""
    for s_tap, t_tap in pairs:
        s_tap, t_tap = normalize_tap(s_tap), normalize_tap(t_tap)
        if s_tap not in student_shapes:
            raise ValueError(f"Distillation pair: unknown student tap {s_tap!r}.")
        if t_tap not in teacher_shapes:
            raise ValueError(f"Distillation pair: unknown teacher tap {t_tap!r}.")
        if tuple(student_shapes[s_tap][-2:]) != tuple(teacher_shapes[t_tap][-2:]):
            raise ValueError(
                f"Distillation pair {s_tap} <-> {t_tap}: spatial sizes differ "
                f"({tuple(student_shapes[s_tap][-2:])} vs {tuple(teacher_shapes[t_tap][-2:])})."
            )
