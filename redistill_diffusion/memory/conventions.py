"""The paper's peak-memory convention (docs/memory.md), one estimator per model family.

The convention is a formula over layer input/output sizes, per sample (batch dim dropped), with
weights not counted. A shape probe (one forward pass with hooks) supplies the sizes; an estimator
registered for the model family turns them into per-layer figures, and the peak is their maximum.

Other families plug in with :func:`register_paper_convention`::

    def resnet_convention(model, probe):            # -> list[LayerMemory]
        return [LayerMemory("conv1", probe.conv_bytes("conv1")), ...]

    register_paper_convention(lambda m: isinstance(m, timm.models.ResNet), resnet_convention, name="resnet")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from .report import LayerMemory


def _first_tensor(value) -> torch.Tensor | None:
    sample = getattr(value, "sample", None)  # diffusers output dataclasses
    if isinstance(sample, torch.Tensor):
        return sample
    for item in tree_flatten(value)[0]:
        if isinstance(item, torch.Tensor):
            return item
    return None


def per_sample_bytes(tensor: torch.Tensor) -> int:
    """Bytes of one sample of a batched tensor (the paper drops the batch dimension)."""
    batch = tensor.shape[0] if tensor.dim() > 0 and tensor.shape[0] > 0 else 1
    return tensor.numel() // batch * tensor.element_size()


@dataclass(frozen=True)
class ProbedCall:
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None
    input_bytes: int
    output_bytes: int


class ShapeProbe:
    """Per-sample input/output sizes of every module, recorded during one forward pass.

    ``input_bytes(name)`` / ``output_bytes(name)`` / ``conv_bytes(name)`` (input + output) refer to
    the module's first call; ``calls(name)`` lists them all. Names are ``model.named_modules()``
    names; ``""`` is the model itself.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._calls: dict[str, list[ProbedCall]] = {}

    def _record(self, name: str, module, args, kwargs, output) -> None:
        inputs = _first_tensor((args, kwargs))
        out = _first_tensor(output)
        self._calls.setdefault(name, []).append(
            ProbedCall(
                input_shape=tuple(inputs.shape) if inputs is not None else None,
                output_shape=tuple(out.shape) if out is not None else None,
                input_bytes=per_sample_bytes(inputs) if inputs is not None else 0,
                output_bytes=per_sample_bytes(out) if out is not None else 0,
            )
        )

    def run(self, *args, **kwargs) -> ShapeProbe:
        handles = [
            module.register_forward_hook(partial(self._record, name), with_kwargs=True)
            for name, module in self.model.named_modules()
        ]
        try:
            with torch.no_grad():
                self.model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return self

    def ran(self, name: str) -> bool:
        return name in self._calls

    def calls(self, name: str) -> list[ProbedCall]:
        if name not in self._calls:
            raise KeyError(f"Module {name!r} did not run in the shape probe of {type(self.model).__name__}.")
        return self._calls[name]

    def input_bytes(self, name: str) -> int:
        return self.calls(name)[0].input_bytes

    def output_bytes(self, name: str) -> int:
        return self.calls(name)[0].output_bytes

    def conv_bytes(self, name: str) -> int:
        """The convention's cost of a conv / pool layer: its input plus its output."""
        return self.input_bytes(name) + self.output_bytes(name)

    @property
    def model_output_bytes(self) -> int:
        return self.output_bytes("")


PaperConvention = Callable[[nn.Module, ShapeProbe], list[LayerMemory]]


@dataclass(frozen=True)
class _RegisteredConvention:
    name: str
    predicate: Callable[[nn.Module], bool]
    estimate: PaperConvention


_REGISTRY: list[_RegisteredConvention] = []


def register_paper_convention(
    predicate: Callable[[nn.Module], bool], estimate: PaperConvention, name: str | None = None
) -> None:
    """Register the paper's convention for the models ``predicate`` accepts.

    ``estimate(model, probe)`` returns the per-layer figures (bytes per sample) in forward order.
    The most recent registration whose predicate matches wins, so a specific family registered
    later overrides a generic one. Registering the same name again replaces it.
    """
    name = name or getattr(estimate, "__name__", repr(estimate))
    _REGISTRY[:] = [entry for entry in _REGISTRY if entry.name != name]
    _REGISTRY.append(_RegisteredConvention(name, predicate, estimate))


def unregister_paper_convention(name: str) -> None:
    """Remove a registered convention (tests, or replacing a family's estimator wholesale)."""
    _REGISTRY[:] = [entry for entry in _REGISTRY if entry.name != name]


def registered_paper_conventions() -> list[str]:
    return [entry.name for entry in _REGISTRY]


def find_paper_convention(model: nn.Module) -> _RegisteredConvention:
    """The convention for ``model``: the most recent registration whose predicate accepts it.

    This package imports no model family: each side registers its own (diffusers UNets below,
    timm classifiers when ``redistill_diffusion.classification`` is imported).
    """
    for entry in reversed(_REGISTRY):
        if entry.predicate(model):
            return entry
    raise ValueError(
        f"No paper convention is registered for {type(model).__name__} (known: "
        f"{', '.join(registered_paper_conventions()) or 'none'}); use convention='exact' or register one with "
        "redistill_diffusion.memory.register_paper_convention (timm classifiers: import "
        "redistill_diffusion.classification, which registers theirs)."
    )


# ----------------------------------------------------------------------------------------------
# diffusers UNet2DModel (and ReDistillUNet2DModel, which keeps every module name of its teacher)


def _unet_resnet_bytes(probe: ShapeProbe, name: str) -> int:
    """DDPM ResBlock: max(conv1 in+out + time-projection out, conv2 in+out) + block input."""
    temb = probe.output_bytes(f"{name}.time_emb_proj") if probe.ran(f"{name}.time_emb_proj") else 0
    return max(
        probe.conv_bytes(f"{name}.conv1") + temb, probe.conv_bytes(f"{name}.conv2")
    ) + probe.input_bytes(name)


def red_block_bytes(probe: ShapeProbe, name: str) -> int:
    """RED block, as the reference estimator counts it: max(gate conv in+out + block input, residual conv in+out)."""
    candidates = []
    if probe.ran(f"{name}.gate.0"):
        candidates.append(probe.conv_bytes(f"{name}.gate.0") + probe.input_bytes(name))
    if probe.ran(f"{name}.residual.0"):
        candidates.append(probe.conv_bytes(f"{name}.residual.0"))
    return max(candidates, default=0)


def _check_unet_supported(model: nn.Module) -> None:
    for kind, blocks in (("down", model.down_blocks), ("up", model.up_blocks)):
        for index, block in enumerate(blocks):
            if hasattr(block, "skip_conv") or not hasattr(block, "resnets"):
                raise ValueError(
                    f"The paper convention covers UNets of DownBlock2D/AttnDownBlock2D/UpBlock2D/AttnUpBlock2D; "
                    f"{kind}_blocks.{index} is {type(block).__name__}. Use convention='exact'."
                )


def unet2d_paper_convention(model: nn.Module, probe: ShapeProbe) -> list[LayerMemory]:
    """The reference DDPM estimator, on diffusers module names (docs/memory.md).

    Layers: the time embedding (largest Linear output), ``conv_in`` (input + output), each ResBlock
    (formula above) and each resampler (output only), plus the skip tensors stored for the decoder
    while they are alive: all stored so far on the down path and in the middle; on the up path the
    reference code drops one stored skip before EVERY up module, upsamplers included, so it counts
    fewer live skips than exist. That quirk is what gives the published 3.50 MB (an honest count
    of the stored skips gives 4.50 MB for google/ddpm-cifar10-32). The output head counts its
    output only. Attention layers are not counted (the reference estimator skips them too).
    RED blocks (``red_blocks.*``) are listed as their own layers, without skips, as the reference
    code reports them apart from the network.
    """
    _check_unet_supported(model)
    layers: list[LayerMemory] = []
    linear_outputs = [
        probe.output_bytes(f"time_embedding.{name}")
        for name, module in model.time_embedding.named_modules()
        if isinstance(module, nn.Linear) and probe.ran(f"time_embedding.{name}")
    ]
    layers.append(LayerMemory("time_embedding", max(linear_outputs, default=0)))
    layers.append(LayerMemory("conv_in", probe.conv_bytes("conv_in")))
    skips = [probe.output_bytes("conv_in")]

    for i, block in enumerate(model.down_blocks):
        for j in range(len(block.resnets)):
            name = f"down_blocks.{i}.resnets.{j}"
            layers.append(LayerMemory(name, _unet_resnet_bytes(probe, name) + sum(skips)))
            skips.append(probe.output_bytes(name))
        for j in range(len(block.downsamplers or [])):
            name = f"down_blocks.{i}.downsamplers.{j}"
            layers.append(LayerMemory(name, probe.output_bytes(name) + sum(skips)))
            skips.append(probe.output_bytes(name))

    if model.mid_block is not None:
        for j in range(len(model.mid_block.resnets)):
            name = f"mid_block.resnets.{j}"
            layers.append(LayerMemory(name, _unet_resnet_bytes(probe, name) + sum(skips)))

    for i, block in enumerate(model.up_blocks):
        for j in range(len(block.resnets)):
            skips = skips[:-1]
            name = f"up_blocks.{i}.resnets.{j}"
            layers.append(LayerMemory(name, _unet_resnet_bytes(probe, name) + sum(skips)))
        for j in range(len(block.upsamplers or [])):
            skips = skips[:-1]  # the quirk: an upsampler consumes no skip, the reference drops one anyway
            name = f"up_blocks.{i}.upsamplers.{j}"
            layers.append(LayerMemory(name, probe.output_bytes(name) + sum(skips)))

    layers.append(LayerMemory("conv_out", probe.model_output_bytes))
    red_blocks = getattr(model, "red_blocks", None)
    if isinstance(red_blocks, nn.ModuleDict):
        for key in red_blocks:
            name = f"red_blocks.{key}"
            if probe.ran(name):
                layers.append(LayerMemory(name, red_block_bytes(probe, name)))
    return layers


def _is_unet2d(model: nn.Module) -> bool:
    from diffusers import UNet2DModel

    return isinstance(model, UNet2DModel)


register_paper_convention(_is_unet2d, unet2d_paper_convention, name="diffusers.UNet2DModel")
