"""Part 4: what the memory claim means on a GPU: torch.cuda.max_memory_allocated, teacher vs student.

Only on a machine with CUDA (GPU time is scarce: one call measures everything once). The google/ddpm-cifar10-32
UNet (random weights: memory and speed depend on the architecture only) and its stem-stride-2 student with
RED blocks at the paper placement, in inference: the peak CUDA memory of one denoiser forward above the weights
at batch 1 and 128, fp32 and fp16, and the sampling throughput (DDIM 50 steps, batch 128). Without CUDA the
part says so in one line and is skipped.
"""

from __future__ import annotations

import time
from typing import Any

from common import fmt_bytes, markdown_table, part_result

BATCHES = (1, 128)
DTYPES = ("float32", "float16")
SAMPLING_STEPS = 50
SAMPLING_BATCH = 128


def _peak_forward_bytes(model, batch: int, dtype, resolution: int) -> int:
    """Peak CUDA bytes allocated during one no_grad forward, above what was allocated before it (weights)."""
    import torch

    x = torch.randn(batch, 3, resolution, resolution, device="cuda", dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.no_grad():
        model(x, t)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _images_per_second(model, scheduler_config, dtype, resolution: int) -> float:
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler

    pipeline = DDIMPipeline(unet=model, scheduler=DDIMScheduler.from_config(scheduler_config)).to("cuda")
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator("cuda").manual_seed(0)
    pipeline(batch_size=8, num_inference_steps=2, generator=generator, output_type="np")  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipeline(
        batch_size=SAMPLING_BATCH, num_inference_steps=SAMPLING_STEPS, generator=generator, output_type="np"
    )
    torch.cuda.synchronize()
    return SAMPLING_BATCH / (time.perf_counter() - start)


def run(output_dir, work_dir, budget: str, **_: Any) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return part_result("cuda", budget, status="skipped", reason="no CUDA GPU on this machine")
    from diffusers import UNet2DModel

    from redistill_diffusion.diffusion.configs import (
        SHIPPED_UNET_CONFIGS,
        load_scheduler_config,
        load_unet_config,
    )
    from redistill_diffusion.diffusion.model import ReDistillUNet2DModel

    hub_id = "google/ddpm-cifar10-32"
    teacher = UNet2DModel.from_config(load_unet_config(SHIPPED_UNET_CONFIGS[hub_id]).config).eval()
    student = ReDistillUNet2DModel.from_teacher(
        teacher, stem_stride=2, init="random", red_preset="paper"
    ).eval()
    scheduler_config = load_scheduler_config(hub_id)
    resolution = int(teacher.config.sample_size)
    rows = []
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        models = {"teacher": teacher.to("cuda", dtype), "student": student.to("cuda", dtype)}
        row: dict[str, Any] = {"dtype": dtype_name}
        for name, model in models.items():
            for batch in BATCHES:
                row[f"{name}_peak_batch_{batch}"] = _peak_forward_bytes(model, batch, dtype, resolution)
            row[f"{name}_images_per_second"] = _images_per_second(model, scheduler_config, dtype, resolution)
        for batch in BATCHES:
            row[f"ratio_batch_{batch}"] = (
                row[f"teacher_peak_batch_{batch}"] / row[f"student_peak_batch_{batch}"]
            )
        rows.append(row)
    header = (
        ["dtype"]
        + [f"peak @ batch {b}: teacher -> student (ratio)" for b in BATCHES]
        + [f"images/s (DDIM {SAMPLING_STEPS}, batch {SAMPLING_BATCH}): teacher -> student"]
    )
    table = [
        [r["dtype"]]
        + [
            f"{fmt_bytes(r[f'teacher_peak_batch_{b}'])} -> {fmt_bytes(r[f'student_peak_batch_{b}'])} "
            f"({r[f'ratio_batch_{b}']:.2f}x)"
            for b in BATCHES
        ]
        + [f"{r['teacher_images_per_second']:.0f} -> {r['student_images_per_second']:.0f}"]
        for r in rows
    ]
    device = torch.cuda.get_device_name(0)
    markdown = (
        f"GPU: {device}. {hub_id} UNet (random weights) and its stem-stride-2 student with RED blocks at the paper "
        "placement; torch.cuda.max_memory_allocated during one no_grad forward, above the weights (cuDNN "
        "workspaces included).\n\n" + markdown_table(header, table)
    )
    return part_result("cuda", budget, rows=rows, markdown=markdown, gpu=device)
