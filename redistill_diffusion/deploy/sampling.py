"""Sample with an exported denoiser through diffusers' own DDPM/DDIM pipelines.

`RuntimeUNet` stands in for the UNet (same ``config``, ``dtype``, ``device``, ``forward(sample, t)``)
and calls the runtime instead, so the loop, the noise draws and the scheduler steps are diffusers'
unchanged; with the same seed, the images differ from the eager pipeline's only by the runtime's
numerical error (`compare_sampling`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from .runtimes import runner_for


class RuntimeUNet(nn.Module):
    """A UNet2DModel look-alike whose forward runs an exported file (``.onnx`` / ``.pte``)."""

    def __init__(self, config, path: str | os.PathLike, threads: int | None = None):
        super().__init__()
        self.config = config
        self.runner = runner_for(path, threads=threads)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        timesteps = torch.as_tensor(timestep, dtype=torch.long).reshape(-1).expand(sample.shape[0])
        inputs = (sample.float(), timesteps.contiguous())
        if class_labels is not None:
            inputs += (class_labels,)
        output = self.runner(*inputs)
        return UNet2DOutput(sample=output) if return_dict else (output,)


def compare_sampling(
    unet: nn.Module,
    scheduler: Any,
    path: str | os.PathLike,
    *,
    sampler: str = "ddim",
    num_inference_steps: int = 10,
    num_samples: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Sample with the eager UNet and with the exported file (same seed, same diffusers pipeline);
    return the largest per-pixel difference in float ([0, 1]) and in uint8 levels."""
    from diffusers import DDPMPipeline

    from ..diffusion.sampling import sample_generator, with_sampler

    images = {}
    for name, model in (("eager", unet), ("runtime", RuntimeUNet(unet.config, path))):
        pipeline = with_sampler(DDPMPipeline(unet=model, scheduler=scheduler), sampler)
        pipeline.set_progress_bar_config(disable=True)
        generators = [sample_generator(seed, index) for index in range(num_samples)]
        with torch.inference_mode():
            images[name] = pipeline(
                batch_size=num_samples,
                generator=generators,
                num_inference_steps=num_inference_steps,
                output_type="pt",
            ).images.float()
    difference = (images["eager"] - images["runtime"]).abs()
    as_uint8 = {k: (v.clamp(0, 1) * 255).round() for k, v in images.items()}
    return {
        "sampler": sampler,
        "steps": num_inference_steps,
        "samples": num_samples,
        "seed": seed,
        "max_abs_difference": difference.max().item(),
        "max_uint8_difference": int((as_uint8["eager"] - as_uint8["runtime"]).abs().max().item()),
    }


__all__ = ["RuntimeUNet", "compare_sampling"]
