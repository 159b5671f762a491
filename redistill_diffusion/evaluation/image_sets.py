"""Scoring image sets that are already on disk (``redistill eval --images A B --reference R``): one row per
set, in the same metrics.json / metrics.md as pipeline evaluations.

Every input and the reference are opened and checked, and the metric sizes planned, before any feature
is computed; features of each set are cached in resumable chunks (``feature_cache``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .extractors import AUTO, FeatureExtractorChoice, resolve_feature_extractor
from .metrics import (
    BINARY_METRICS,
    DEFAULT_ISC_SPLITS,
    DEFAULT_KID_SUBSETS,
    check_metrics,
    check_save_reference_stats,
    check_stats_fit,
    check_stats_metrics,
    default_metrics,
    open_image_set,
    plan_against,
    prepare_reference,
    sample_resolution_of,
    score_against,
)
from .report import write_report
from .sampling import default_device
from .stats_file import ReferenceStats

ImageSource = str | os.PathLike | torch.Tensor | Dataset


def _named(images) -> list[tuple[str, ImageSource]]:
    if isinstance(images, Mapping):
        return [(str(name), source) for name, source in images.items()]
    if isinstance(images, (str, os.PathLike, torch.Tensor, Dataset)):
        images = [images]
    return [
        (str(source) if isinstance(source, (str, os.PathLike)) else f"images_{index}", source)
        for index, source in enumerate(images)
    ]


@contextmanager
def _quiet_datasets():
    """datasets' progress bars off while inputs are opened and checked (restored afterwards): a wrong input
    must fail in one line, not after split-generation bars."""
    import datasets

    enabled = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def evaluate_images(
    images: Sequence[ImageSource] | Mapping[str, ImageSource] | ImageSource,
    reference=None,
    *,
    metrics: Sequence[str] | None = None,
    feature_extractor: str | FeatureExtractorChoice | torch.nn.Module = AUTO,
    feature_extractor_weights_path: str | os.PathLike | None = None,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    max_images: int | None = None,
    reference_max_images: int | None = None,
    reference_split: str = "train",
    reference_stats: str | os.PathLike | ReferenceStats | None = None,
    save_reference_stats_to: str | os.PathLike | None = None,
    batch_size: int = 64,
    seed: int = 0,
    cache_root: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[dict]:
    """FID / KID / ... of each image set against one reference. Returns one dict per set (``images``, the
    metrics, ``num_samples``, ``feature_extractor``, ``reference``, ...); with ``output_dir`` also writes
    ``metrics.json`` and ``metrics.md``. Sources: see ``compute_metrics``."""
    extractor = resolve_feature_extractor(feature_extractor, feature_extractor_weights_path)
    metrics = check_metrics(metrics) if metrics is not None else default_metrics(extractor)
    named = _named(images)
    if not named:
        raise ValueError("give at least one image set (--images)")
    needs_reference = any(m in BINARY_METRICS for m in metrics)
    if needs_reference and reference is None and reference_stats is None:
        raise ValueError("FID / KID / precision-recall need a --reference (or --reference_stats)")
    with _quiet_datasets():
        base_reference = (
            prepare_reference(
                reference, reference_stats, split=reference_split, max_images=reference_max_images
            )
            if needs_reference
            else None
        )
    save_reference_stats_to = check_save_reference_stats(save_reference_stats_to, metrics)
    if isinstance(base_reference, ReferenceStats):
        check_stats_metrics(metrics, reference_is_stats=True)
        check_stats_fit(base_reference, extractor)
    # Image sets are opened after the cheap checks of the reference and the output file.
    with _quiet_datasets():
        sets = [
            (name, open_image_set(source, split=reference_split, max_images=max_images))
            for name, source in named
        ]
    plans = [
        plan_against(
            metrics,
            len(dataset),
            base_reference,
            extractor,
            kid_subset_size=kid_subset_size,
            kid_subsets=kid_subsets,
            isc_splits=isc_splits,
        )
        for _, dataset in sets
    ]
    device = torch.device(device) if device is not None else default_device()
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    for (name, dataset), settings in zip(sets, plans):
        resolution = sample_resolution_of(dataset)
        scores = score_against(
            dataset,
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
        result = {"images": name, **scores}
        result.update(
            reference=base_reference.description if base_reference is not None else None,
            resolution=list(resolution),
            seed=seed,
            device=str(device),
        )
        results.append(result)
        if output_dir is not None:  # after every set, so a long run keeps what it has finished
            write_report(results, extractor, output_dir)
    return results
