"""`measure_peak_memory`: one entry point for both conventions and any nn.Module (pairs: ``summary.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .conventions import ShapeProbe, find_paper_convention
from .report import MemoryReport
from .tracer import trace_forward

CONVENTIONS = ("exact", "paper")

ModelInputs = torch.Tensor | Sequence[Any] | Mapping[str, Any]


def _is_unet2d(model: nn.Module) -> bool:
    from diffusers import UNet2DModel

    return isinstance(model, UNet2DModel)


def _reference_tensor(model: nn.Module) -> torch.Tensor | None:
    parameter = next(iter(model.parameters()), None)
    return parameter if parameter is not None else next(iter(model.buffers()), None)


def default_inputs(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inputs for one forward pass of ``model``: an image batch, plus timestep/class labels for a UNet.

    ``input_shape`` is (C, H, W) (``batch_size`` is prepended) or (B, C, H, W). The tensors take
    the device and floating dtype of the model's parameters.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (int(batch_size), *shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(
            f"input_shape must be (C, H, W) or (B, C, H, W) with positive sizes, got {tuple(input_shape)}."
        )
    if _is_unet2d(model):  # the CLI checks this before building; the API must too
        stride = 2 ** (len(model.config.down_block_types) - 1)
        if shape[2] % stride or shape[3] % stride:
            raise ValueError(
                f"input_shape {tuple(input_shape)}: height and width must be multiples of {stride}, the total "
                f"stride of this {type(model).__name__}."
            )
    reference = _reference_tensor(model)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    if not _is_unet2d(model):
        return (sample,), {}
    kwargs: dict[str, Any] = {}
    if model.class_embedding is not None:
        kwargs["class_labels"] = torch.zeros(shape[0], dtype=torch.long, device=device)
    return (sample, torch.full((shape[0],), 999, dtype=torch.long, device=device)), kwargs


def _split_inputs(inputs: ModelInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return tuple(inputs), {}
    raise ValueError(
        f"inputs must be a tensor, a sequence of positional inputs or a dict, got {type(inputs).__name__}."
    )


def _first_shape(args: tuple, kwargs: dict) -> tuple[int, ...]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
    raise ValueError("inputs contain no tensor to measure.")


def measure_peak_memory(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    inputs: ModelInputs | None = None,
    convention: str = "exact",
    batch_size: int = 1,
) -> MemoryReport:
    """Peak activation memory of one no_grad forward pass of ``model``.

    Give either ``input_shape`` ((C, H, W) or (B, C, H, W); UNets also get a timestep) or the
    ``inputs`` themselves (a tensor, positional inputs, or keyword inputs as a dict).
    ``convention="exact"`` traces every tensor storage of the real eager execution (weights,
    buffers and inputs excluded; batch as given). ``convention="paper"`` applies the paper's
    per-sample formula registered for the model's family (see ``register_paper_convention``).
    The model is put in eval mode for the measurement and restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown convention {convention!r}; choose one of {', '.join(CONVENTIONS)}.")
    if (input_shape is None) == (inputs is None):
        raise ValueError("Pass exactly one of input_shape or inputs.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if input_shape is not None:
        args, kwargs = default_inputs(model, input_shape, batch_size)
    else:
        args, kwargs = _split_inputs(inputs)
    shape = _first_shape(args, kwargs)
    estimator = find_paper_convention(model) if convention == "paper" else None  # fail before any forward

    was_training = model.training
    model.eval()
    try:
        if convention == "exact":
            return trace_forward(model, args, kwargs, shape)
        probe = ShapeProbe(model).run(*args, **kwargs)
        layers = estimator.estimate(model, probe)
    finally:
        model.train(was_training)
    if not layers:
        raise ValueError(
            f"The paper convention {estimator.name!r} returned no layers for {type(model).__name__}."
        )
    peak = max(layers, key=lambda layer: layer.bytes)
    return MemoryReport(
        convention="paper",
        model=type(model).__name__,
        input_shape=shape,
        peak_bytes=int(peak.bytes),
        peak_layer=peak.name,
        layers=layers,
        notes=[f"paper convention '{estimator.name}': per sample, weights excluded (docs/memory.md)"],
    )
