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
from .extractors import AUTO, FeatureExtractorChoice, resolve_feature_extractor
from .metrics import (
    BINARY_METRICS,
    DEFAULT_ISC_SPLITS,
    DEFAULT_KID_SUBSETS,
    check_metrics,
    check_save_reference_stats,
    check_stats_fit,
    default_metrics,
    plan_against,
    prepare_reference,
    score_against,
)
from .reference import UInt8ImageDataset
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
from .stats_file import ReferenceStats

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


def _denoise_scores(
    pipeline, resolution, cache: dict, source, num_images: int, timesteps: int, device
) -> dict:
    """Held-out denoising loss of the pipeline's denoiser (fp32, eval mode); the held-out images are loaded
    once per resolution."""
    from .denoising import denoising_loss, load_heldout_images

    unet = pipeline.unet
    key = (int(resolution[0]), int(unet.config.in_channels))
    if key not in cache:
        logger.info("loading %d held-out images from %s", num_images, source)
        cache[key] = load_heldout_images(str(source), key[0], key[1], num_images)
    was_training, dtype = unet.training, unet.dtype
    unet.eval().float().to(device)
    try:
        scores = denoising_loss(unet, pipeline.scheduler, cache[key], num_timesteps=timesteps, device=device)
    finally:
        unet.train(was_training).to(dtype)
    per_step = {k[len("denoise_loss_t") :]: v for k, v in scores.items() if k.startswith("denoise_loss_t")}
    return {
        **{k: v for k, v in scores.items() if not k.startswith("denoise_loss_t")},
        "denoise_loss_per_timestep": per_step,
        "heldout_num_images": int(cache[key].shape[0]),
    }


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
    metrics: Sequence[str] | None = None,
    feature_extractor: str | FeatureExtractorChoice | torch.nn.Module = AUTO,
    feature_extractor_weights_path: str | os.PathLike | None = None,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    reference_max_images: int | None = None,
    reference_split: str = "train",
    reference_stats: str | os.PathLike | ReferenceStats | None = None,
    save_reference_stats_to: str | os.PathLike | None = None,
    cache_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    mixed_precision: str = "no",
    measure_memory: bool = True,
    progress: bool = True,
    heldout_data: str | os.PathLike | None = None,
    heldout_num_images: int = 500,
    heldout_timesteps: int = 10,
) -> list[dict]:
    """Sample every pipeline with the same seeds and score it against ``reference``.

    ``"denoise"`` among the metrics adds the held-out denoising loss (``evaluation.denoising``) of each
    denoiser on ``heldout_num_images`` images of ``heldout_data`` (images it was not trained on), at
    ``heldout_timesteps`` fixed timesteps: ``denoise_loss`` and its low/mid/high noise bands.

    ``pipelines``: Hub ids, local folders or loaded pipelines (a mapping gives them names).
    ``reference``: see ``load_reference``; or ``reference_stats``, a pytorch-fid .npz (FID only);
    ``save_reference_stats_to`` writes the reference's statistics as one. ``metrics=None``: FID and KID (+ IS
    when the extractor has logits). Returns one dict per pipeline (keys as in metrics.json:
    ``pipeline``, the metrics, ``num_samples``, ``sampler``, ``num_inference_steps``,
    ``images_per_second``, ``peak_bytes``, ``feature_extractor``, ...). With ``output_dir``, writes
    ``metrics.json``, ``metrics.md`` and ``samples_<name>.png``.
    """
    # ---- validation: nothing is sampled until every input has been checked ----
    extractor = resolve_feature_extractor(feature_extractor, feature_extractor_weights_path)
    wants_denoise = metrics is not None and "denoise" in [m.lower() for m in metrics]
    if wants_denoise:
        if not heldout_data:
            raise ValueError(
                "the denoise metric needs --heldout_data: held-out images the models were not trained on"
            )
        if heldout_num_images < 1 or heldout_timesteps < 1:
            raise ValueError("--heldout_num_images and --heldout_timesteps must be positive")
        metrics = [m for m in metrics if m.lower() != "denoise"]
    metrics = (
        (check_metrics(metrics) if metrics else ()) if metrics is not None else default_metrics(extractor)
    )
    if not metrics and not wants_denoise:
        raise ValueError("give at least one metric")
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
    if needs_reference and reference is None and reference_stats is None:
        raise ValueError("FID / KID / precision-recall need a --reference (or --reference_stats)")
    base_reference = (
        prepare_reference(reference, reference_stats, split=reference_split, max_images=reference_max_images)
        if needs_reference
        else None
    )
    save_reference_stats_to = check_save_reference_stats(save_reference_stats_to, metrics)
    settings = (
        None
        if not metrics
        else plan_against(
            metrics,
            num_samples,
            base_reference,
            extractor,
            kid_subset_size=kid_subset_size,
            kid_subsets=kid_subsets,
            isc_splits=isc_splits,
        )
    )
    if isinstance(base_reference, ReferenceStats):
        check_stats_fit(base_reference, extractor)
    loaded = []
    for name, source in named:
        if progress:
            announce(f"loading pipeline {name}")
        loaded.append((name, load_pipeline(source)))
    heldout_images: dict[tuple[int, int], torch.Tensor] = {}
    device = torch.device(device) if device is not None else default_device()
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    grid_files = grid_file_names([name for name, _ in loaded])

    # ---- work ----
    results = []
    for (name, pipeline), grid_file in zip(loaded, grid_files):
        resolution = sample_resolution(pipeline)
        result: dict = {"pipeline": name}
        if wants_denoise:
            result.update(
                _denoise_scores(
                    pipeline,
                    resolution,
                    heldout_images,
                    heldout_data,
                    heldout_num_images,
                    heldout_timesteps,
                    device,
                )
            )
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
        scores = (
            {}
            if settings is None
            else score_against(
                UInt8ImageDataset(sampled.images),
                resolution,
                base_reference,
                extractor,
                settings,
                cache_root,
                batch_size=batch_size,
                seed=seed,
                device=device,
                progress=progress,
                save_reference_stats_to=save_reference_stats_to if not results else None,
            )
        )
        context = ("feature_extractor", "num_samples", "kid_subset_size")
        result.update(
            {k: v for k, v in scores.items() if not k.startswith("reference_") and k not in context}
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
