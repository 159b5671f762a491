"""FID / IS / KID (and precision / recall) of a set of uint8 images against a reference, by torch-fidelity.

Image sets read from disk (references, ``--images`` inputs) get their features computed in resumable
chunks into torch-fidelity's own file cache (``feature_cache``), keyed by the set's identity (source,
size, resolution) and the extractor's (name and weights); torch-fidelity then finds them and only does
the arithmetic. Whether a reference was already cached is reported as ``reference_cache_hit``. A
pytorch-fid ``.npz`` (``stats_file``) can stand in for the reference images for FID.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.utils_torch import torch_atomic_save

from .extractors import FeatureExtractorChoice
from .feature_cache import cache_features, cached_fid_statistics, metric_layers, stat_file
from .reference import ReferenceImages, UInt8ImageDataset, load_reference
from .stats_file import ReferenceStats, check_stats_output, load_reference_stats, save_reference_stats

METRICS = ("fid", "isc", "kid", "prc")
BINARY_METRICS = ("fid", "kid", "prc")
DEFAULT_KID_SUBSET_SIZE = 1000
DEFAULT_KID_SUBSETS = 100
DEFAULT_ISC_SPLITS = 10


def default_cache_root() -> str:
    """torch-fidelity's own default: ``$TORCH_HOME/fidelity_cache``."""
    return os.path.join(torch.hub._get_torch_home(), "fidelity_cache")


def default_metrics(extractor: FeatureExtractorChoice) -> tuple[str, ...]:
    """FID and KID, plus IS when the extractor has class logits (the TF-FID Inception has none)."""
    return ("fid", "isc", "kid") if extractor.provides_logits else ("fid", "kid")


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    metrics = tuple(dict.fromkeys(m.lower() for m in metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(
            f"metrics must be chosen from {', '.join(METRICS)}, got {', '.join(metrics) or 'none'}"
        )
    return metrics


@dataclass(frozen=True)
class MetricSettings:
    """Metric options after validation against the sizes of both sets (see ``plan_metrics``)."""

    metrics: tuple[str, ...]
    kid_subset_size: int
    kid_subsets: int
    isc_splits: int


def check_stats_metrics(metrics: Sequence[str], reference_is_stats: bool) -> None:
    """A pytorch-fid statistics file has a mean and covariance only: FID, not KID or precision/recall."""
    if reference_is_stats and set(metrics) - {"fid", "isc"}:
        raise ValueError(
            "a statistics file (--reference_stats) gives FID only: KID and precision/recall need reference "
            "images (--reference)"
        )


def plan_metrics(
    metrics: Sequence[str],
    *,
    num_samples: int,
    num_reference: int | None,
    extractor: FeatureExtractorChoice,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    reference_is_stats: bool = False,
) -> MetricSettings:
    """Validate metric options before any work. KID draws subsets of ``kid_subset_size`` from both sets: a
    size given larger than a set is an error; the default (1000) is lowered to the smaller set with a
    warning. IS splits are lowered likewise. ``metrics=None``: ``default_metrics(extractor)``."""
    metrics = check_metrics(metrics) if metrics is not None else default_metrics(extractor)
    check_stats_metrics(metrics, reference_is_stats)
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for FID / IS / KID, got {num_samples}")
    if any(m in BINARY_METRICS for m in metrics) and num_reference is not None and num_reference < 2:
        raise ValueError(f"the reference needs at least 2 images, it has {num_reference}")
    if "isc" in metrics and not extractor.provides_logits:
        raise ValueError(
            f"IS needs class logits, and feature extractor {extractor.label} has no classifier head"
            + (
                " (pass torch-fidelity's full Inception .pth as --feature_extractor_weights_path, or a classifier)"
                if extractor.is_inception
                else ""
            )
        )
    explicit = kid_subset_size is not None
    kid_subset_size = DEFAULT_KID_SUBSET_SIZE if kid_subset_size is None else int(kid_subset_size)
    if kid_subset_size < 2 or kid_subsets < 1:
        raise ValueError(
            f"kid_subset_size must be >= 2 and kid_subsets >= 1, got {kid_subset_size}, {kid_subsets}"
        )
    if "kid" in metrics:
        limit = min(num_samples, num_reference if num_reference is not None else num_samples)
        if kid_subset_size > limit and explicit:
            raise ValueError(
                f"kid_subset_size {kid_subset_size} is larger than the sets ({num_samples} images, "
                f"{num_reference} reference images): give at most {limit}, or more images"
            )
        if kid_subset_size > limit:
            warnings.warn(
                f"kid_subset_size {kid_subset_size} is larger than the sets ({num_samples} samples, "
                f"{num_reference} reference images); using {limit}",
                stacklevel=2,
            )
            kid_subset_size = limit
    if "isc" in metrics and isc_splits > num_samples:
        warnings.warn(
            f"isc_splits {isc_splits} > num_samples {num_samples}; using {num_samples}", stacklevel=2
        )
        isc_splits = num_samples
    return MetricSettings(metrics, kid_subset_size, kid_subsets, isc_splits)


def reference_cache_name(reference: ReferenceImages, extractor: FeatureExtractorChoice) -> str:
    """torch-fidelity ``input2_cache_name``: readable prefix + hash of reference and extractor identities."""
    digest = hashlib.sha1(f"{reference.identity}||{extractor.identity}".encode()).hexdigest()[:16]
    name = reference.description.rstrip("/\\").replace("\\", "/").split("/")[-1]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-40:].strip("_") or "reference"
    return f"redistill-{readable}-n{len(reference)}-{digest}"


def open_image_set(
    images: torch.Tensor | Dataset | str | os.PathLike,
    *,
    split: str = "train",
    max_images: int | None = None,
) -> Dataset:
    """Images to score: a uint8 tensor or Dataset as given, or a path / Hub id opened like a reference
    (parquet, image folder, saved or Hub dataset; ``max_images`` keeps a fixed random subset)."""
    if isinstance(images, torch.Tensor):
        return UInt8ImageDataset(images)
    if isinstance(images, Dataset) and not isinstance(images, ReferenceImages):
        return images
    return load_reference(images, split=split, max_images=max_images)


def sample_resolution_of(images: Dataset) -> tuple[int, int]:
    return images.native_resolution if isinstance(images, ReferenceImages) else tuple(images[0].shape[-2:])


def prepare_reference(
    reference,
    reference_stats: str | os.PathLike | ReferenceStats | None,
    *,
    split: str = "train",
    max_images: int | None = None,
    resolution: tuple[int, int] | None = None,
) -> ReferenceImages | ReferenceStats | None:
    """The reference images (opened and checked) or a statistics file, whichever was given; not both."""
    if reference_stats is not None:
        if reference is not None:
            raise ValueError(
                "give reference images (--reference) or a statistics file (--reference_stats), not both"
            )
        if isinstance(reference_stats, ReferenceStats):
            return reference_stats
        return load_reference_stats(reference_stats)
    if reference is None or isinstance(reference, ReferenceStats):
        return reference
    return load_reference(reference, split=split, max_images=max_images, resolution=resolution)


def feature_dim(extractor: FeatureExtractorChoice) -> int:
    """Length of the extractor's FID feature vector, from one blank image (checks a statistics file)."""
    from torch_fidelity.utils import create_feature_extractor

    layer = metric_layers(extractor, ["fid"])[0]
    network = create_feature_extractor(
        extractor.name,
        [layer],
        cuda=False,
        feature_extractor_weights_path=extractor.weights_path,
        verbose=False,
    )
    with torch.no_grad():
        (features,) = network(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    return int(features.reshape(1, -1).shape[1])


def check_stats_fit(reference: ReferenceStats, extractor: FeatureExtractorChoice) -> None:
    dim = feature_dim(extractor)
    if reference.dim != dim:
        raise ValueError(
            f"reference statistics {reference.description} are {reference.dim}-dimensional, but the features of "
            f"{extractor.label} are {dim}-dimensional"
        )


class _StatisticsOnly(Dataset):
    """Stands in for reference images when only FID statistics are known: torch-fidelity finds the statistics
    in its cache and never reads an image (reading one is a bug, hence the error)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> torch.Tensor:
        raise RuntimeError("reference images were read although only their statistics are known")


def check_save_reference_stats(save_reference_stats_to, metrics: Sequence[str]):
    """The checked ``--save_reference_stats`` path (None when not asked); it needs FID among the metrics."""
    if save_reference_stats_to is None:
        return None
    path = check_stats_output(save_reference_stats_to)
    if "fid" not in metrics:
        raise ValueError("--save_reference_stats needs fid among the metrics")
    return path


def score_images(
    samples: Dataset,
    reference: ReferenceImages | ReferenceStats | None,
    extractor: FeatureExtractorChoice,
    settings: MetricSettings,
    *,
    batch_size: int,
    cache_root: str | None,
    seed: int,
    device: str | torch.device | None,
    progress: bool,
    save_reference_stats_to: str | os.PathLike | None = None,
) -> dict:
    """One torch-fidelity call on inputs already validated by ``plan_metrics`` (no checks repeated), the
    reference at the samples' resolution. Image sets on disk are first cached in resumable chunks
    (``feature_cache``)."""
    cache_root = os.path.abspath(cache_root or default_cache_root())
    device = (
        torch.device(device)
        if device is not None
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    kwargs = dict(
        input1=samples,
        cuda=device.type == "cuda",
        batch_size=batch_size,
        isc="isc" in settings.metrics,
        fid="fid" in settings.metrics,
        kid="kid" in settings.metrics,
        prc="prc" in settings.metrics,
        kid_subset_size=settings.kid_subset_size,
        kid_subsets=settings.kid_subsets,
        isc_splits=settings.isc_splits,
        rng_seed=seed,
        cache=True,
        cache_root=cache_root,
        # Samples live in memory: worker processes would only copy them.
        save_cpu_ram=True,
        verbose=progress,
        **extractor.calculate_metrics_kwargs(),
    )
    cached = dict(
        cache_root=cache_root,
        batch_size=batch_size,
        device=device,
        progress=progress,
        metrics=settings.metrics,
    )
    if isinstance(samples, ReferenceImages):  # an image set on disk: resumable, reusable features
        name = reference_cache_name(samples, extractor)
        _cache(samples, name, extractor, description=f"features of {samples.description}", **cached)
        kwargs["input1_cache_name"] = name
    reference_result, reference_kwargs, reference_name = _reference_input(reference, extractor, cached)
    kwargs.update(reference_kwargs)
    result: dict = {
        "feature_extractor": extractor.description,
        "num_samples": len(samples),
        **reference_result,
    }
    raw = torch_fidelity.calculate_metrics(**kwargs)
    names = extractor.metric_keys()
    result.update({ours: float(raw[theirs]) for theirs, ours in names.items() if theirs in raw})
    if "kid" in settings.metrics:
        result["kid_subset_size"] = settings.kid_subset_size
    if save_reference_stats_to is not None and reference_name is not None:
        save_reference_stats(
            save_reference_stats_to, cached_fid_statistics(cache_root, reference_name, extractor)
        )
        result["reference_stats_saved"] = str(save_reference_stats_to)
    return result


def _reference_input(
    reference: ReferenceImages | ReferenceStats | None, extractor: FeatureExtractorChoice, cached: dict
) -> tuple[dict, dict, str | None]:
    """What the result says of the reference, torch-fidelity's ``input2`` arguments, and the reference's
    cache name: statistics are written into torch-fidelity's cache (it then reads no image); reference images
    get their features cached in resumable chunks first."""
    if isinstance(reference, ReferenceStats):
        name, cache_root = reference.cache_name, cached["cache_root"]
        path = stat_file(cache_root, name, extractor, metric_layers(extractor, ["fid"])[0])
        if not os.path.exists(path):
            os.makedirs(cache_root, exist_ok=True)
            torch_atomic_save({"mu": reference.mu, "sigma": reference.sigma}, path)
        return (
            {"reference_stats": reference.description},
            dict(input2=_StatisticsOnly(), input2_cache_name=name),
            name,
        )
    if reference is None:
        return {}, {}, None
    name = reference_cache_name(reference, extractor)
    hit = _cache(
        reference, name, extractor, description=f"reference features ({reference.description})", **cached
    )
    said = {"reference_cache_hit": hit, "reference_num_images": len(reference)}
    return said, dict(input2=reference, input2_cache_name=name), name


def _cache(images, name, extractor, *, metrics, **kwargs) -> bool:
    return cache_features(images, name, extractor, metrics, **kwargs)
