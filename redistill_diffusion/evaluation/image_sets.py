"""Scoring image sets: the one validate -> plan -> score path of every evaluation.

``evaluate_images`` scores image sets on disk or in memory (``redistill eval --images A B --reference R``),
one row per set, in the same metrics.json / metrics.md as pipeline evaluations; ``compute_metrics`` is its
single-set case, and the diffusion task's ``evaluate_pipelines`` samples each pipeline and scores the samples
with the same ``ImageScoring``. Every input and the reference are opened and checked, and the metric sizes planned, before
any feature is computed; features of each set are cached in resumable chunks (``feature_cache``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .extractors import AUTO, FeatureExtractorChoice, resolve_feature_extractor
from .metrics import (
    BINARY_METRICS,
    DEFAULT_ISC_SPLITS,
    DEFAULT_KID_SUBSETS,
    MetricSettings,
    check_metrics,
    check_save_reference_stats,
    check_stats_fit,
    check_stats_metrics,
    default_metrics,
    open_image_set,
    plan_metrics,
    prepare_reference,
    sample_resolution_of,
    score_images,
)
from .reference import ReferenceImages
from .report import write_report
from .stats_file import ReferenceStats

ImageSource = str | os.PathLike | torch.Tensor | Dataset


def default_device() -> torch.device:
    """Where features (and samples) are computed when no device is given: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


@dataclass
class ImageScoring:
    """What every image set of one evaluation is scored with, checked once by `check_scoring` before any
    image is opened or sampled: the extractor, the metrics, the reference (images or statistics) and
    torch-fidelity's options."""

    extractor: FeatureExtractorChoice
    metrics: tuple[str, ...]
    reference: ReferenceImages | ReferenceStats | None
    save_reference_stats_to: Path | None
    kid_subset_size: int | None
    kid_subsets: int
    isc_splits: int
    batch_size: int
    seed: int
    device: torch.device
    cache_root: str | os.PathLike | None
    progress: bool
    sets_scored: int = 0

    @property
    def reference_description(self) -> str | None:
        return self.reference.description if self.reference is not None else None

    def plan(self, num_images: int) -> MetricSettings:
        """The metric settings for a set of ``num_images`` (checked against the reference's size)."""
        return plan_metrics(
            self.metrics,
            num_samples=num_images,
            num_reference=len(self.reference) if isinstance(self.reference, ReferenceImages) else None,
            extractor=self.extractor,
            kid_subset_size=self.kid_subset_size,
            kid_subsets=self.kid_subsets,
            isc_splits=self.isc_splits,
            reference_is_stats=isinstance(self.reference, ReferenceStats),
        )

    def score(self, images: Dataset, settings: MetricSettings) -> dict:
        """One set against the reference resized to the set's resolution; the reference's statistics are
        saved (``save_reference_stats_to``) with the first set."""
        resolution = sample_resolution_of(images)
        reference = self.reference
        if isinstance(reference, ReferenceImages):
            reference = reference.at_resolution(resolution)
        first = self.sets_scored == 0
        self.sets_scored += 1
        return score_images(
            images,
            reference,
            self.extractor,
            settings,
            batch_size=self.batch_size,
            cache_root=None if self.cache_root is None else str(self.cache_root),
            seed=self.seed,
            device=self.device,
            progress=self.progress,
            save_reference_stats_to=self.save_reference_stats_to if first else None,
        )


# The options of `check_scoring` that `evaluate_images` and `evaluate_pipelines` take under the same names.
SCORING_OPTIONS = (
    "reference_stats",
    "reference_split",
    "reference_max_images",
    "save_reference_stats_to",
    "kid_subset_size",
    "kid_subsets",
    "isc_splits",
    "batch_size",
    "seed",
    "cache_root",
    "device",
    "progress",
)


def scoring_options(arguments: Mapping[str, object]) -> dict:
    """The `SCORING_OPTIONS` among a public function's arguments (its ``locals()``), for `check_scoring`."""
    return {name: arguments[name] for name in SCORING_OPTIONS}


def check_scoring(
    extractor: FeatureExtractorChoice,
    metrics: Sequence[str] | None,
    reference=None,
    *,
    reference_stats: str | os.PathLike | ReferenceStats | None = None,
    reference_split: str = "train",
    reference_max_images: int | None = None,
    save_reference_stats_to: str | os.PathLike | None = None,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    batch_size: int = 64,
    seed: int = 0,
    cache_root: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ImageScoring:
    """Validate the metrics, the reference (opened, or a statistics file that fits the extractor) and the
    statistics output; ``metrics=None``: FID and KID (+ IS when the extractor has logits)."""
    metrics = check_metrics(metrics) if metrics is not None else default_metrics(extractor)
    needs_reference = any(m in BINARY_METRICS for m in metrics)
    if needs_reference and reference is None and reference_stats is None:
        raise ValueError(
            "FID / KID / precision-recall need a reference: images (--reference) or a statistics file "
            "(--reference_stats)"
        )
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
    return ImageScoring(
        extractor=extractor,
        metrics=metrics,
        reference=base_reference,
        save_reference_stats_to=save_reference_stats_to,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        isc_splits=isc_splits,
        batch_size=batch_size,
        seed=seed,
        device=torch.device(device) if device is not None else default_device(),
        cache_root=cache_root,
        progress=progress,
    )


# The keys an `evaluate_images` row adds to the scores (what `compute_metrics` leaves out).
ROW_KEYS = ("images", "reference", "resolution", "seed", "device")


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
    """FID / KID / ... of each image set against one reference.

    ``images``: uint8 N x 3 x H x W tensors, Datasets of such tensors, or image sets on disk / on the Hub
    (parquet, image folder, saved dataset; ``max_images`` keeps a fixed subset); a mapping names them.
    ``reference``: see ``load_reference``; or ``reference_stats``, a pytorch-fid .npz (FID only);
    ``save_reference_stats_to`` writes the reference's statistics as one. ``metrics=None``: FID and KID
    (+ IS when the extractor has logits). Returns one dict per set: ``images`` (its name), the metrics
    (``fid``, ``kid_mean``/``kid_std``, ``isc_mean``/``isc_std`` with the TF FID Inception; ``fd_<label>``,
    ``kd_<label>_*``, ``is_<label>_*`` with another extractor; ``precision``/``recall``/``f_score``),
    ``feature_extractor``, ``num_samples``, ``reference_cache_hit``, ``reference_num_images``, the
    settings used, ``reference``, ``resolution``, ``seed``, ``device``. With ``output_dir`` also writes
    ``metrics.json`` and ``metrics.md``.
    """
    extractor = resolve_feature_extractor(feature_extractor, feature_extractor_weights_path)
    named = _named(images)
    if not named:
        raise ValueError("give at least one image set (--images)")
    scoring = check_scoring(extractor, metrics, reference, **scoring_options(locals()))
    # Image sets are opened after the cheap checks of the reference and the output file.
    with _quiet_datasets():
        sets = [
            (name, open_image_set(source, split=reference_split, max_images=max_images))
            for name, source in named
        ]
    plans = [scoring.plan(len(dataset)) for _, dataset in sets]
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict] = []
    for (name, dataset), settings in zip(sets, plans):
        result = {"images": name, **scoring.score(dataset, settings)}
        result.update(
            reference=scoring.reference_description,
            resolution=list(sample_resolution_of(dataset)),
            seed=seed,
            device=str(scoring.device),
        )
        results.append(result)
        if output_dir is not None:  # after every set, so a long run keeps what it has finished
            write_report(results, extractor, output_dir)
    return results


def compute_metrics(
    samples: torch.Tensor | Dataset | str | os.PathLike,
    reference=None,
    *,
    metrics: Sequence[str] | None = None,
    feature_extractor: str | FeatureExtractorChoice | torch.nn.Module = AUTO,
    feature_extractor_weights_path: str | None = None,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    batch_size: int = 64,
    reference_max_images: int | None = None,
    reference_split: str = "train",
    reference_stats: str | os.PathLike | ReferenceStats | None = None,
    save_reference_stats_to: str | os.PathLike | None = None,
    max_images: int | None = None,
    cache_root: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """`evaluate_images` of one set: its metrics against ``reference`` (or a pytorch-fid ``reference_stats``
    .npz), without the row's name and context (keys: see ``evaluate_images``)."""
    arguments = dict(locals())
    [row] = evaluate_images([arguments.pop("samples")], **arguments)
    return {key: value for key, value in row.items() if key not in ROW_KEYS}
