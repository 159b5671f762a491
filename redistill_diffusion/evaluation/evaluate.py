"""Side-by-side evaluation of diffusion pipelines: sample, measure, score, report.

Everything that can fail (pipelines, reference, feature extractor, metric sizes) is checked before
the first sample is drawn.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from ..progress import announce
from .extractors import INCEPTION, FeatureExtractorChoice, resolve_feature_extractor
from .metrics import (
    BINARY_METRICS,
    DEFAULT_ISC_SPLITS,
    DEFAULT_KID_SUBSET_SIZE,
    DEFAULT_KID_SUBSETS,
    check_metrics,
    plan_metrics,
    score_images,
)
from .reference import ImageTensorDataset, load_reference
from .report import save_sample_grid, write_report
from .sampling import (
    DEFAULT_STEPS,
    SAMPLERS,
    check_pipeline_source,
    default_device,
    load_pipeline,
    sample_images,
    sample_resolution,
)

logger = logging.getLogger(__name__)

PipelineSource = str | os.PathLike | DiffusionPipeline


def denoiser_peak_memory(unet: torch.nn.Module, resolution: tuple[int, int]) -> dict[str, int]:
    """Peak activation memory of one denoiser forward at batch 1 (``redistill_diffusion.memory``):
    ``peak_bytes`` (exact liveness count) and ``peak_bytes_paper`` (the paper's convention) where
    available. Empty when the memory module cannot measure this model."""
    try:
        from redistill_diffusion.memory import measure_peak_memory
    except ImportError as error:
        logger.warning("peak memory not reported: redistill_diffusion.memory unavailable (%s)", error)
        return {}
    shape = (unet.config.in_channels, *resolution)
    out: dict[str, int] = {}
    for key, convention in (("peak_bytes", "exact"), ("peak_bytes_paper", "paper")):
        try:
            out[key] = int(measure_peak_memory(unet, shape, convention=convention).peak_bytes)
        except Exception as error:  # a model family without a convention must not stop the evaluation
            logger.warning("peak memory (%s) not reported for %s: %s", convention, type(unet).__name__, error)
    return out


def _pipeline_names(pipelines) -> list[tuple[str, PipelineSource]]:
    if isinstance(pipelines, Mapping):
        return [(str(name), source) for name, source in pipelines.items()]
    if isinstance(pipelines, (str, os.PathLike, DiffusionPipeline)):
        pipelines = [pipelines]
    named = []
    for index, source in enumerate(pipelines):
        if isinstance(source, DiffusionPipeline):
            name = getattr(source.config, "_name_or_path", None) or f"pipeline_{index}"
        else:
            name = str(source)
        named.append((name, source))
    return named


def grid_file_names(names: Sequence[str]) -> list[str]:
    """``samples_<name>.png`` for each pipeline: the last path parts of a folder or Hub id, made unique."""
    files, seen = [], set()
    for name in names:
        parts = [p for p in re.split(r"[\\/]+", name.rstrip("/\\")) if p not in ("", ".", "..")]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts[-2:]) or "pipeline")
        candidate, suffix = stem, 2
        while candidate in seen:
            candidate, suffix = f"{stem}_{suffix}", suffix + 1
        seen.add(candidate)
        files.append(f"samples_{candidate}.png")
    return files


def evaluate_pipelines(
    pipelines: Sequence[PipelineSource] | Mapping[str, PipelineSource] | PipelineSource,
    reference=None,
    *,
    num_samples: int = 1000,
    sampler: str = "ddim",
    num_inference_steps: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    metrics: Sequence[str] = ("fid", "isc", "kid"),
    feature_extractor: str | FeatureExtractorChoice | torch.nn.Module = INCEPTION,
    feature_extractor_weights_path: str | os.PathLike | None = None,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    reference_max_images: int | None = None,
    reference_split: str = "train",
    cache_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    mixed_precision: str = "no",
    measure_memory: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Sample every pipeline with the same seeds and score it against ``reference``.

    ``pipelines``: Hub ids, local folders or loaded pipelines (a mapping gives them names).
    ``reference``: see ``load_reference``. Returns one dict per pipeline (keys as in metrics.json:
    ``pipeline``, the metrics, ``num_samples``, ``sampler``, ``num_inference_steps``,
    ``images_per_second``, ``peak_bytes``, ``feature_extractor``, ...). With ``output_dir``, writes
    ``metrics.json``, ``metrics.md`` and ``samples_<name>.png``.
    """
    # ---- validation: nothing is sampled until every input has been checked ----
    metrics = check_metrics(metrics)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    steps = DEFAULT_STEPS[sampler] if num_inference_steps is None else int(num_inference_steps)
    if steps < 1 or batch_size < 1 or num_samples < 1:
        raise ValueError("num_samples, num_inference_steps and batch_size must be positive")
    named = _pipeline_names(pipelines)
    if not named:
        raise ValueError("give at least one pipeline")
    for _, source in named:
        if not isinstance(source, DiffusionPipeline):
            check_pipeline_source(source)
    needs_reference = any(m in BINARY_METRICS for m in metrics)
    if needs_reference and reference is None:
        raise ValueError("FID / KID / precision-recall need a --reference")
    base_reference = (
        load_reference(reference, split=reference_split, max_images=reference_max_images)
        if needs_reference
        else None
    )
    extractor = resolve_feature_extractor(feature_extractor, feature_extractor_weights_path)
    loaded = []
    for name, source in named:
        if progress:
            announce(f"loading pipeline {name}")
        loaded.append((name, load_pipeline(source)))
    settings = plan_metrics(
        metrics,
        num_samples=num_samples,
        num_reference=len(base_reference) if base_reference is not None else None,
        extractor=extractor,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        isc_splits=isc_splits,
    )
    device = torch.device(device) if device is not None else default_device()
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    grid_files = grid_file_names([name for name, _ in loaded])

    # ---- work ----
    results = []
    for (name, pipeline), grid_file in zip(loaded, grid_files):
        resolution = sample_resolution(pipeline)
        sampled = sample_images(
            pipeline,
            num_samples,
            sampler=sampler,
            num_inference_steps=steps,
            batch_size=batch_size,
            seed=seed,
            device=device,
            mixed_precision=mixed_precision,
            progress=progress,
            description=f"sampling {name}",
        )
        result: dict = {"pipeline": name}
        scores = score_images(
            ImageTensorDataset(sampled.images),
            base_reference.at_resolution(resolution) if base_reference is not None else None,
            extractor,
            settings,
            batch_size=batch_size,
            cache_root=None if cache_root is None else str(cache_root),
            seed=seed,
            device=device,
            progress=progress,
        )
        result.update(
            {k: v for k, v in scores.items() if not k.startswith("reference_") and k != "kid_subset_size"}
        )
        result.update(
            num_samples=num_samples,
            sampler=sampler,
            num_inference_steps=steps,
            images_per_second=sampled.images_per_second,
            sampling_seconds=sampled.seconds,
        )
        if measure_memory:
            if progress:
                announce(f"peak memory of {name}'s denoiser (exact and paper conventions)")
            result.update(denoiser_peak_memory(pipeline.unet, resolution))
        result.update(
            feature_extractor=extractor.description,
            reference=base_reference.description if base_reference is not None else None,
            **{k: v for k, v in scores.items() if k.startswith("reference_") or k == "kid_subset_size"},
            resolution=list(resolution),
            seed=seed,
            device=str(device),
            mixed_precision=mixed_precision,
        )
        if output_dir is not None:
            save_sample_grid(sampled.images, output_dir / grid_file)
            result["sample_grid"] = grid_file
        results.append(result)
        if output_dir is not None:  # after every pipeline, so a long run keeps what it has finished
            write_report(results, extractor, output_dir)
    return results
