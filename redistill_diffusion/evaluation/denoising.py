"""Held-out denoising loss: a cheap, deterministic quality signal for a denoiser.

FID needs thousands of samples, each costing a full sampling chain; at CPU scale it mostly ranks noise.
The denoising loss asks the model the question it is trained on, on images it never saw: the mean
squared error of its prediction (epsilon, x0 or v, as the scheduler is configured) at a fixed, evenly
spaced set of timesteps with a fixed noise draw. The same model gives the same number whatever the
batch size or device order (noise is drawn per timestep for the whole set from a seeded CPU generator),
so two students can be compared on it directly. Reported overall and per timestep band (low / mid /
high noise thirds of the schedule).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BANDS = ("low", "mid", "high")  # thirds of [0, num_train_timesteps): little, medium, much noise


def heldout_timesteps(num_train_timesteps: int, count: int) -> list[int]:
    """``count`` evenly spaced timesteps (centres of equal bins) of a ``num_train_timesteps`` schedule."""
    if count < 1:
        raise ValueError(f"the held-out denoising loss needs at least one timestep, got {count}.")
    return [min(num_train_timesteps - 1, int((k + 0.5) * num_train_timesteps / count)) for k in range(count)]


def _target(scheduler, images: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return images
    return scheduler.get_velocity(images, noise, timesteps)


@torch.no_grad()
def denoising_loss(
    unet: nn.Module,
    scheduler,
    images: torch.Tensor,
    *,
    num_timesteps: int = 10,
    seed: int = 0,
    batch_size: int = 100,
    device: str | torch.device | None = None,
    timesteps: Sequence[int] | None = None,
) -> dict[str, float]:
    """Held-out denoising MSE of ``unet`` on ``images`` (N x C x H x W in [-1, 1]).

    Returns ``denoise_loss`` (mean over timesteps), ``denoise_loss_<band>`` for the low/mid/high noise
    thirds and ``denoise_loss_t<t>`` per timestep. The model is evaluated as it is (call ``.eval()``
    first for the sampling-time behaviour of dropout and BatchNorm).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"held-out images must be a non-empty N x C x H x W batch, got shape {tuple(images.shape)}."
        )
    total_steps = int(scheduler.config.num_train_timesteps)
    steps = list(timesteps) if timesteps is not None else heldout_timesteps(total_steps, num_timesteps)
    param = next(unet.parameters())
    device = torch.device(device) if device is not None else param.device
    images = images.detach().float().cpu()
    per_step: dict[int, float] = {}
    for index, t in enumerate(steps):
        generator = torch.Generator().manual_seed(seed * 100_003 + index)
        noise = torch.randn(images.shape, generator=generator)
        squared = torch.zeros((), dtype=torch.float64)
        for start in range(0, images.shape[0], batch_size):
            x0, eps = images[start : start + batch_size], noise[start : start + batch_size]
            t_batch = torch.full((x0.shape[0],), t, dtype=torch.long)
            noisy = scheduler.add_noise(x0, eps, t_batch)
            prediction = unet(noisy.to(device, param.dtype), t_batch.to(device)).sample.float().cpu()
            target = _target(scheduler, x0, eps, t_batch)
            squared += ((prediction - target) ** 2).mean(dim=(1, 2, 3)).double().sum()
        per_step[t] = float(squared / images.shape[0])
    result = {"denoise_loss": sum(per_step.values()) / len(per_step)}
    for band_index, band in enumerate(BANDS):
        low, high = band_index * total_steps / 3, (band_index + 1) * total_steps / 3
        values = [v for t, v in per_step.items() if low <= t < high]
        if values:
            result[f"denoise_loss_{band}"] = sum(values) / len(values)
    result.update({f"denoise_loss_t{t}": v for t, v in per_step.items()})
    return result


def load_heldout_images(
    source: str, resolution: int, channels: int, num_images: int, seed: int = 0
) -> torch.Tensor:
    """``num_images`` images of ``source`` (any source training reads) as one N x C x H x W tensor in [-1, 1].

    A seeded random subset, not the first rows: datasets are often sorted by label.
    """
    from ..data import ImageTensorDataset, build_image_transform, load_image_dataset

    dataset = load_image_dataset(dataset_name=source, builtin_resolution=resolution)
    tensors = ImageTensorDataset(dataset, build_image_transform(resolution, channels, center_crop=True))
    count = min(int(num_images), len(tensors))
    if count < 1:
        raise ValueError(f"held-out data {source!r} has no images.")
    order = torch.randperm(len(tensors), generator=torch.Generator().manual_seed(seed))[:count]
    return torch.stack([tensors[int(i)]["images"] for i in order])
