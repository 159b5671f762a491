"""Drawing reproducible uint8 samples from DDPM / DDIM pipelines (loaded by `pipeline_io.load_pipeline`).

Every sample ``i`` gets its own ``torch.Generator`` seeded from ``(seed, i)``, so the same seed gives
the same images whatever the batch size, and a teacher and its student start from the same noise:
their grids can be compared image by image.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline
from tqdm.auto import tqdm

from ..evaluation.image_sets import default_device
from .pipeline_io import load_pipeline

SAMPLERS = ("ddpm", "ddim")
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50}
MIXED_PRECISION = ("no", "bf16", "fp16")


def with_sampler(pipeline: DiffusionPipeline, sampler: str) -> DiffusionPipeline:
    """The same unet behind the requested sampler: ancestral DDPM or deterministic DDIM (eta 0), both
    built from the pipeline's own scheduler config (betas, timesteps, prediction type)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    config = pipeline.scheduler.config
    if sampler == "ddim":
        return DDIMPipeline(unet=pipeline.unet, scheduler=DDIMScheduler.from_config(config))
    return DDPMPipeline(unet=pipeline.unet, scheduler=DDPMScheduler.from_config(config))


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index``: a deterministic function of (seed, index) with no collisions
    between neighbouring seeds (``SeedSequence`` mixes both)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {mixed_precision!r}"
        )
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class SamplingResult:
    images: torch.Tensor  # uint8, N x 3 x H x W
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.images.shape[0] / self.seconds if self.seconds > 0 else float("inf")

    def pil_images(self) -> list:
        """The same samples as RGB PIL images (training's sample grid and TensorBoard images)."""
        from PIL import Image

        return [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in self.images]


def sample_images(
    pipeline: DiffusionPipeline | str | os.PathLike,
    num_samples: int,
    *,
    sampler: str = "ddim",
    num_inference_steps: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    mixed_precision: str = "no",
    progress: bool = True,
    description: str = "sampling",
) -> SamplingResult:
    """Draw ``num_samples`` reproducible images of a pipeline (object, Hub id or folder) as uint8
    N x 3 x H x W (grayscale repeated to 3 channels), timed: ``.images``, ``.seconds``."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    steps = (
        DEFAULT_STEPS[sampler]
        if num_inference_steps is None and sampler in DEFAULT_STEPS
        else num_inference_steps
    )
    if steps is None or steps < 1:
        raise ValueError(f"num_inference_steps must be positive, got {steps}")
    device = torch.device(device) if device is not None else default_device()
    if not isinstance(pipeline, DiffusionPipeline):
        pipeline = load_pipeline(pipeline)
    sampling_pipeline = with_sampler(pipeline, sampler).to(device)
    # The denoising steps always show (one batch of a 1,000-step grid is minutes on a CPU); with several
    # batches an outer bar counts the images and each batch's step bar clears when done.
    single = num_samples <= batch_size
    sampling_pipeline.set_progress_bar_config(
        disable=not progress, desc=description if single else f"{description}: batch", leave=single
    )
    batches = []
    start = time.perf_counter()
    with tqdm(total=num_samples, desc=description, unit="img", disable=not progress or single) as bar:
        for first in range(0, num_samples, batch_size):
            count = min(batch_size, num_samples - first)
            generators = [sample_generator(seed, first + offset) for offset in range(count)]
            with torch.inference_mode(), _autocast(device, mixed_precision):
                images = sampling_pipeline(
                    batch_size=count, generator=generators, num_inference_steps=steps, output_type="pt"
                ).images
            batches.append(_to_uint8(images))
            bar.update(count)
    seconds = time.perf_counter() - start
    return SamplingResult(images=torch.cat(batches), seconds=seconds)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float B x C x H x W -> uint8 B x 3 x H x W, rounded as diffusers' ``numpy_to_pil`` does."""
    images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.contiguous()


def generate_samples(
    pipeline: DiffusionPipeline | str | os.PathLike, num_samples: int, **options
) -> torch.Tensor:
    """Deprecated: ``sample_images(pipeline, num_samples, ...).images``."""
    warnings.warn(
        "generate_samples is deprecated; use sample_images(...).images", DeprecationWarning, stacklevel=2
    )
    return sample_images(load_pipeline(pipeline), num_samples, **options).images


def sampler_of(pipeline: DiffusionPipeline) -> str:
    """The `SAMPLERS` name of a pipeline's scheduler: ``"ddim"`` for a DDIMScheduler, else ``"ddpm"``."""
    return "ddim" if isinstance(pipeline.scheduler, DDIMScheduler) else "ddpm"


def sample_pil_images(
    pipeline: DiffusionPipeline,
    num_images: int,
    seed: int = 0,
    num_inference_steps: int = 1000,
    device: str | torch.device | None = None,
    progress: str | None = None,
    *,
    sampler: str | None = None,
) -> list:
    """Deprecated: ``sample_images(pipeline, num_images, ...).pil_images()`` (one name for sampling)."""
    warnings.warn(
        "sample_pil_images is deprecated; use sample_images(...).pil_images()",
        DeprecationWarning,
        stacklevel=2,
    )
    return sample_images(
        pipeline,
        num_images,
        sampler=sampler or sampler_of(pipeline),
        num_inference_steps=num_inference_steps,
        batch_size=num_images,
        seed=seed,
        device=device if device is not None else pipeline.unet.device,
        progress=bool(progress),
        description=progress or "sampling",
    ).pil_images()


def sample_resolution(pipeline: DiffusionPipeline) -> tuple[int, int]:
    size = pipeline.unet.config.sample_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
