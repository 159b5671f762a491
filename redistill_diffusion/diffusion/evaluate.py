"""Side-by-side evaluation of diffusion pipelines: sample each one (``sampling``), then score the samples
through evaluation's one image-scoring path (``evaluation.image_sets``), with its throughput, peak memory
and held-out denoising loss (``pipeline_denoising_loss`` for one saved pipeline).

Everything that can fail (pipelines, reference, feature extractor, metric sizes) is checked before
the first sample is drawn.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from ..evaluation.comparison import heldout_shapes
from ..evaluation.extractors import AUTO, FeatureExtractorChoice, resolve_feature_extractor
from ..evaluation.image_sets import ImageScoring, check_scoring, default_device, scoring_options
from ..evaluation.metrics import DEFAULT_ISC_SPLITS, DEFAULT_KID_SUBSETS, MetricSettings
from ..evaluation.reference import UInt8ImageDataset
from ..evaluation.report import save_sample_grid, write_report
from ..evaluation.stats_file import ReferenceStats
from ..progress import announce
from .pipeline_io import check_pipeline_source, load_pipeline
from .sampling import DEFAULT_STEPS, SAMPLERS, sample_images, sample_resolution

logger = logging.getLogger(__name__)

PipelineSource = str | os.PathLike | DiffusionPipeline
# metrics.json's keys for the denoiser's peak memory in each convention (batch 1).
PEAK_MEMORY_KEYS = {"exact": "peak_bytes", "paper": "peak_bytes_paper"}


def denoiser_peak_memory(unet: torch.nn.Module, resolution: tuple[int, int]) -> dict[str, int]:
    """Peak activation memory of one denoiser forward at batch 1 (``redistill_diffusion.memory``):
    ``peak_bytes`` (exact liveness count) and ``peak_bytes_paper`` (the paper's convention) where
    available; a convention that cannot measure this model is a warning, not a failed evaluation."""
    from ..memory import measure_conventions

    reports = measure_conventions(
        unet, (unet.config.in_channels, *resolution), conventions=tuple(PEAK_MEMORY_KEYS)
    )
    return {PEAK_MEMORY_KEYS[convention]: int(report.peak_bytes) for convention, report in reports.items()}


def pipeline_denoising_loss(
    pipeline_dir: str | Path,
    images: torch.Tensor | None = None,
    num_timesteps: int = 10,
    num_images: int = 256,
) -> dict[str, float]:
    """Held-out denoising loss of a saved pipeline's (EMA) UNet in eval mode on the CPU; without ``images``,
    on ``num_images`` unseen built-in shapes at the UNet's resolution (``evaluation.comparison``)."""
    from ..evaluation.denoising import denoising_loss

    pipeline = load_pipeline(pipeline_dir)
    unet = pipeline.unet.eval()
    if images is None:
        images = heldout_shapes(num_images=num_images, resolution=int(unet.config.sample_size))
    return denoising_loss(unet, pipeline.scheduler, images, num_timesteps=num_timesteps)


@dataclass
class _HeldOut:
    """The held-out denoising loss asked for with ``"denoise"`` among the metrics; its images are loaded
    once per (resolution, channels)."""

    source: str | os.PathLike
    num_images: int
    timesteps: int
    images: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def scores(self, pipeline: DiffusionPipeline, resolution: tuple[int, int], device: torch.device) -> dict:
        """Held-out denoising loss of the pipeline's denoiser (fp32, eval mode, put back afterwards)."""
        from ..evaluation.denoising import denoising_loss, load_heldout_images

        unet = pipeline.unet
        key = (int(resolution[0]), int(unet.config.in_channels))
        if key not in self.images:
            logger.info("loading %d held-out images from %s", self.num_images, self.source)
            self.images[key] = load_heldout_images(str(self.source), key[0], key[1], self.num_images)
        was_training, dtype = unet.training, unet.dtype
        unet.eval().float().to(device)
        try:
            scores = denoising_loss(
                unet, pipeline.scheduler, self.images[key], num_timesteps=self.timesteps, device=device
            )
        finally:
            unet.train(was_training).to(dtype)
        per_step = {
            k[len("denoise_loss_t") :]: v for k, v in scores.items() if k.startswith("denoise_loss_t")
        }
        return {
            **{k: v for k, v in scores.items() if not k.startswith("denoise_loss_t")},
            "denoise_loss_per_timestep": per_step,
            "heldout_num_images": int(self.images[key].shape[0]),
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


def _check_denoise(
    metrics: Sequence[str] | None, heldout_data, heldout_num_images: int, heldout_timesteps: int
) -> tuple[list[str] | None, _HeldOut | None]:
    """The metrics without ``"denoise"``, and the held-out set it asks for (None when not asked)."""
    if metrics is None or "denoise" not in [m.lower() for m in metrics]:
        return metrics, None
    if not heldout_data:
        raise ValueError(
            "the denoise metric needs --heldout_data: held-out images the models were not trained on"
        )
    if heldout_num_images < 1 or heldout_timesteps < 1:
        raise ValueError("--heldout_num_images and --heldout_timesteps must be positive")
    return [m for m in metrics if m.lower() != "denoise"], _HeldOut(
        heldout_data, heldout_num_images, heldout_timesteps
    )


def _check_sampling(sampler: str, num_inference_steps: int | None, batch_size: int, num_samples: int) -> int:
    """The number of sampling steps (the sampler's default when not given), after checking every count."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    steps = DEFAULT_STEPS[sampler] if num_inference_steps is None else int(num_inference_steps)
    if steps < 1 or batch_size < 1 or num_samples < 1:
        raise ValueError("num_samples, num_inference_steps and batch_size must be positive")
    return steps


def _check_pipelines(pipelines) -> list[tuple[str, PipelineSource]]:
    """The named pipelines, every local folder checked (one line for a folder that is no pipeline)."""
    named = _pipeline_names(pipelines)
    if not named:
        raise ValueError("give at least one pipeline")
    for _, source in named:
        if not isinstance(source, DiffusionPipeline):
            check_pipeline_source(source)
    return named


def _load_pipelines(
    named: list[tuple[str, PipelineSource]], progress: bool
) -> list[tuple[str, DiffusionPipeline]]:
    loaded = []
    for name, source in named:
        if progress:
            announce(f"loading pipeline {name}")
        loaded.append((name, load_pipeline(source)))
    return loaded


@dataclass
class _PipelineRun:
    """Everything one evaluation does to each pipeline, checked before the first one is sampled."""

    extractor: FeatureExtractorChoice
    scoring: ImageScoring | None  # None: no image metric (only the held-out denoising loss)
    settings: MetricSettings | None
    heldout: _HeldOut | None
    sampling: dict
    measure_memory: bool
    mixed_precision: str
    device: torch.device
    progress: bool

    def row(self, name: str, pipeline: DiffusionPipeline) -> tuple[dict, torch.Tensor]:
        """metrics.json's row of one pipeline, and its samples."""
        resolution = sample_resolution(pipeline)
        result: dict = {"pipeline": name}
        if self.heldout is not None:
            result.update(self.heldout.scores(pipeline, resolution, self.device))
        sampled = sample_images(
            pipeline,
            mixed_precision=self.mixed_precision,
            device=self.device,
            progress=self.progress,
            description=f"sampling {name}",
            **self.sampling,
        )
        scores = (
            {}
            if self.scoring is None
            else self.scoring.score(UInt8ImageDataset(sampled.images), self.settings)
        )
        context = ("feature_extractor", "num_samples", "kid_subset_size")
        result.update(
            {k: v for k, v in scores.items() if not k.startswith("reference_") and k not in context}
        )
        result.update(
            num_samples=self.sampling["num_samples"],
            sampler=self.sampling["sampler"],
            num_inference_steps=self.sampling["num_inference_steps"],
            images_per_second=sampled.images_per_second,
            sampling_seconds=sampled.seconds,
        )
        if self.measure_memory:
            if self.progress:
                announce(f"peak memory of {name}'s denoiser (exact and paper conventions)")
            result.update(denoiser_peak_memory(pipeline.unet, resolution))
        result.update(
            feature_extractor=self.extractor.description,
            reference=self.scoring.reference_description if self.scoring is not None else None,
            **{k: v for k, v in scores.items() if k.startswith("reference_") or k == "kid_subset_size"},
            resolution=list(resolution),
            seed=self.sampling["seed"],
            device=str(self.device),
            mixed_precision=self.mixed_precision,
        )
        return result, sampled.images

    def rows(
        self, loaded: list[tuple[str, DiffusionPipeline]], output_dir: str | os.PathLike | None
    ) -> list[dict]:
        """Every pipeline's row in turn; with ``output_dir``, its sample grid and the report so far."""
        if output_dir is not None:
            output_dir = Path(output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
        results: list[dict] = []
        for (name, pipeline), grid_file in zip(loaded, grid_file_names([name for name, _ in loaded])):
            result, samples = self.row(name, pipeline)
            if output_dir is not None:
                save_sample_grid(samples, output_dir / grid_file)
                result["sample_grid"] = grid_file
            results.append(result)
            if output_dir is not None:  # after every pipeline, so a long run keeps what it has finished
                write_report(results, self.extractor, output_dir)
        return results


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
    """Sample every pipeline with the same seeds and score the samples against ``reference``
    (``evaluate_images``'s scoring: the same reference, metrics and options).

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
    metrics, heldout = _check_denoise(metrics, heldout_data, heldout_num_images, heldout_timesteps)
    if metrics is not None and not metrics and heldout is None:
        raise ValueError("give at least one metric")
    steps = _check_sampling(sampler, num_inference_steps, batch_size, num_samples)
    named = _check_pipelines(pipelines)
    scoring = None
    if metrics is None or metrics:
        scoring = check_scoring(extractor, metrics, reference, **scoring_options(locals()))
    device = torch.device(device) if device is not None else default_device()
    run = _PipelineRun(
        extractor=extractor,
        scoring=scoring,
        settings=scoring.plan(num_samples) if scoring is not None else None,
        heldout=heldout,
        sampling=dict(
            num_samples=num_samples,
            sampler=sampler,
            num_inference_steps=steps,
            batch_size=batch_size,
            seed=seed,
        ),
        measure_memory=measure_memory,
        mixed_precision=mixed_precision,
        device=device,
        progress=progress,
    )
    return run.rows(_load_pipelines(named, progress), output_dir)
