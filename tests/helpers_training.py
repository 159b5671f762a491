"""Tiny models and argument lists shared by the training, pipeline and multi-process tests."""

from __future__ import annotations

from pathlib import Path

TINY_UNET = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(8, 16, 16),
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
)


def make_tiny_teacher(folder: Path, seed: int = 0) -> Path:
    """An (untrained) tiny DDPM pipeline folder: enough to exercise every distillation path."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_UNET)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(folder))
    return folder


def fast_args(output_dir: Path, steps: int = 2, batch: int = 8, images: int = 32) -> list[str]:
    """Flags for a few-second CPU run on the built-in offline shapes."""
    return [
        "--dataset_name",
        "redistill:shapes",
        "--builtin_num_images",
        str(images),
        "--output_dir",
        str(output_dir),
        "--train_batch_size",
        str(batch),
        "--max_train_steps",
        str(steps),
        "--lr_warmup_steps",
        "1",
        "--learning_rate",
        "1e-3",
        "--logger",
        "none",
        "--checkpointing_steps",
        "0",
        "--sample_scheduler",
        "ddim",
        "--ddpm_num_inference_steps",
        "2",
        "--eval_batch_size",
        "2",
        "--measure_memory",
        "false",
    ]
