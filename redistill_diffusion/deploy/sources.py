"""What can be deployed: a saved denoiser (a DDPM pipeline folder or a UNet folder) or a saved classifier
folder, as one `Deployable`: a module whose forward takes only tensors, named inputs and example inputs.

Runtimes (ONNX, ExecuTorch) export graphs of tensors in, tensors out; a UNet returns a dataclass and
takes a Python-or-tensor timestep, so the denoiser is wrapped (`DenoiserForExport`). Everything is
checked before a model is built, so a wrong folder is one line and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

UNET_CLASSES = ("UNet2DModel", "ReDistillUNet2DModel")
WHAT_IS_DEPLOYABLE = (
    "pass a saved DDPM pipeline folder (model_index.json + unet/), a UNet folder (config.json of a "
    "UNet2DModel) or a classifier folder (config.json + model.safetensors written by redistill)"
)


class DenoiserForExport(nn.Module):
    """``unet(sample, timestep[, class_labels]).sample`` with tensors only: what a runtime graph can hold.

    ``timestep`` is an int64 tensor of shape (batch,), one timestep per sample.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.unet(sample, timestep, class_labels=class_labels, return_dict=False)[0]


@dataclass
class Deployable:
    """A model ready for export: ``module(*example_inputs(batch))`` is one forward pass."""

    kind: str  # "denoiser" or "classifier"
    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    make_inputs: Callable[[int, int], tuple[torch.Tensor, ...]]  # (batch, seed) -> inputs
    source: str
    scheduler: Any = None  # a denoiser's noise scheduler (None for a bare UNet folder)
    info: dict[str, Any] = field(default_factory=dict)

    def example_inputs(self, batch_size: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Fixed inputs for a check: a seeded image batch (and timesteps spread over the schedule)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        return self.make_inputs(batch_size, seed)


def spread_timesteps(batch_size: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """``batch_size`` timesteps evenly spread over the schedule, first and last included (int64)."""
    if batch_size == 1:
        return torch.tensor([num_train_timesteps // 2], dtype=torch.long)
    return torch.linspace(0, num_train_timesteps - 1, batch_size).round().long()


def denoiser_deployable(
    unet: nn.Module,
    scheduler: Any = None,
    source: str = "UNet2DModel",
    input_shape: tuple[int, int, int] | None = None,
) -> Deployable:
    """A UNet2DModel (teacher or ReDistill student) as a `Deployable` (sample, timestep[, class_labels]),
    at ``input_shape`` (C, H, W; default: the config's channels and sample_size)."""
    config = unet.config
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    channels = int(config.in_channels)
    if input_shape is not None:
        channels, height, width = (int(s) for s in input_shape)
    steps = int(scheduler.config.num_train_timesteps) if scheduler is not None else 1000
    conditional = getattr(unet, "class_embedding", None) is not None

    def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        sample = torch.randn(batch_size, channels, height, width, generator=generator)
        inputs = (sample, spread_timesteps(batch_size, steps))
        if conditional:
            inputs += (torch.zeros(batch_size, dtype=torch.long),)
        return inputs

    names = ["sample", "timestep"] + (["class_labels"] if conditional else [])
    return Deployable(
        kind="denoiser",
        module=DenoiserForExport(unet).eval(),
        input_names=names,
        output_names=["noise_pred"],
        make_inputs=make_inputs,
        source=source,
        scheduler=scheduler,
        info={"model": type(unet).__name__, "input_shape": [channels, height, width]},
    )


def classifier_deployable(model: nn.Module, input_size: tuple[int, int, int], source: str) -> Deployable:
    """A timm classifier (teacher or ReDistill student) as a `Deployable` (pixel_values -> logits)."""
    channels, height, width = (int(s) for s in input_size)

    def make_inputs(batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(batch_size, channels, height, width, generator=generator),)

    return Deployable(
        kind="classifier",
        module=model.eval(),
        input_names=["pixel_values"],
        output_names=["logits"],
        make_inputs=make_inputs,
        source=source,
        info={"model": type(model).__name__, "input_shape": [channels, height, width]},
    )


def classify_folder(folder: str | os.PathLike) -> str:
    """``"denoiser"`` or ``"classifier"`` from the folder's files alone; a one-line ValueError otherwise."""
    from ..files import read_json
    from ..hub import local_unet_folder

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"{folder} is not a folder; {WHAT_IS_DEPLOYABLE}.")
    unet_dir = local_unet_folder(path)
    if unet_dir is not None:
        config = read_json(unet_dir / "config.json")
        name = config.get("_class_name")
        if name in UNET_CLASSES:
            return "denoiser"
        if "redistill" in config or "architecture" in config:
            return "classifier"
        raise ValueError(
            f"{unet_dir / 'config.json'} describes a {name or 'model of unknown class'}; export handles "
            f"{' and '.join(UNET_CLASSES)} denoisers and redistill/timm classifiers: {WHAT_IS_DEPLOYABLE}."
        )
    if (path / "model_index.json").is_file():
        raise ValueError(f"pipeline folder {folder} has no unet/config.json; {WHAT_IS_DEPLOYABLE}.")
    raise ValueError(f"{folder} has neither model_index.json nor config.json; {WHAT_IS_DEPLOYABLE}.")


def load_deployable(folder: str | os.PathLike) -> Deployable:
    """Load a saved teacher or student folder (pipeline, UNet or classifier) as a `Deployable`."""
    kind = classify_folder(folder)
    if kind == "denoiser":
        from ..diffusion.pipeline_io import load_teacher

        unet, scheduler = load_teacher(str(Path(folder).expanduser()))
        return denoiser_deployable(unet.eval(), scheduler, source=str(folder))
    from timm.data import resolve_model_data_config

    from ..classification.hub import load_classifier, read_classifier_config

    path = Path(folder).expanduser()
    model = load_classifier(path)
    saved = (read_classifier_config(path).get("pretrained_cfg") or {}).get("input_size")
    input_size = tuple(saved or resolve_model_data_config(model)["input_size"])  # the size it was saved for
    return classifier_deployable(model, input_size, source=str(folder))


__all__ = [
    "Deployable",
    "DenoiserForExport",
    "classifier_deployable",
    "classify_folder",
    "denoiser_deployable",
    "load_deployable",
    "spread_timesteps",
]
