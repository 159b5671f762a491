"""Tap names, feature capture by hooks, the one shape probe, and pairing student/teacher taps.

A tap is ``"<module name>:<input|output>"`` (``":output"`` when the suffix is omitted); see
docs/architecture.md. `red`, `distillers`, the UNet student and the classifiers all name features
through it; it imports only the tap-name functions of `diffusion.model` (a file that imports nothing
from the package).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

# Tap names are defined once, in the self-contained student file (its RED blocks are keyed by them).
from .diffusion.model import normalize_tap, parse_tap, tap_to_key


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    sample = getattr(value, "sample", None)  # diffusers output dataclasses
    return sample if isinstance(sample, torch.Tensor) else None


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
def probe_shapes(
    model: nn.Module,
    taps: Iterable[str],
    *args,
    forward: Callable | None = None,
    allow_missing: bool = False,
    **kwargs,
) -> dict[str, torch.Size]:
    """The shape seen at each tap in one forward pass ``(forward or model)(*args, **kwargs)``.

    The model runs in eval mode (BatchNorm statistics untouched, no dropout) and is put back in the
    mode it was in. A tap the pass never reaches raises, unless ``allow_missing`` (then it is absent
    from the result). This is the one shape probe of the package: the UNet student, the classifiers'
    RED placement and pairing, the distiller builder and timm's ``feature_info`` refresh all use it.
    """
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, taps, detach=True) as recorder:
            (forward or model)(*args, **kwargs)
    finally:
        model.train(was_training)
    missing = [t for t in recorder.taps if t not in recorder.features]
    if missing and not allow_missing:
        raise ValueError(f"Taps {missing} were never reached in a forward pass of {type(model).__name__}.")
    return {tap: recorder.features[tap].shape for tap in recorder.taps if tap in recorder.features}


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
    student_shapes: Mapping[str, Sequence[int]] | None,
    teacher_shapes: Mapping[str, Sequence[int]] | None,
    same_resolution: bool = True,
    name: str = "Distillation pair",
) -> None:
    """Raise one clear error if a pair names a tap that was not probed or, with ``same_resolution``,
    pairs features of different spatial sizes. Only the shapes that are given are checked; ``name``
    (a distiller's name) starts the message."""
    student_shapes = (
        None if student_shapes is None else {normalize_tap(k): v for k, v in student_shapes.items()}
    )
    teacher_shapes = (
        None if teacher_shapes is None else {normalize_tap(k): v for k, v in teacher_shapes.items()}
    )
    for s_tap, t_tap in pairs:
        s_tap, t_tap = normalize_tap(s_tap), normalize_tap(t_tap)
        if student_shapes is not None and s_tap not in student_shapes:
            raise ValueError(
                f"{name}: unknown student tap {s_tap!r}; probed taps are {sorted(student_shapes)}."
            )
        if teacher_shapes is not None and t_tap not in teacher_shapes:
            raise ValueError(
                f"{name}: unknown teacher tap {t_tap!r}; probed taps are {sorted(teacher_shapes)}."
            )
        if same_resolution and student_shapes is not None and teacher_shapes is not None:
            s_hw, t_hw = tuple(student_shapes[s_tap][-2:]), tuple(teacher_shapes[t_tap][-2:])
            if s_hw != t_hw:
                raise ValueError(
                    f"{name}: pair {s_tap} <-> {t_tap} has different spatial sizes ({s_hw} vs {t_hw}); "
                    "pair features of the same resolution."
                )


__all__ = [
    "FeatureTaps",
    "check_pairs",
    "match_by_resolution",
    "normalize_tap",
    "parse_tap",
    "probe_shapes",
    "tap_to_key",
]
