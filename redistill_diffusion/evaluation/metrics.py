"""FID / IS / KID (and precision / recall) of a set of uint8 images against a reference, by torch-fidelity.

Reference features and statistics go to torch-fidelity's own file cache (``cache_root``) under a
name derived from the reference identity (source, size, resolution) and the feature extractor
identity (name and weights), so a second evaluation against the same reference reuses them; whether
it did is reported as ``reference_cache_hit``.
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
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from .extractors import FeatureExtractorChoice, resolve_feature_extractor
from .reference import ImageTensorDataset, ReferenceImages, load_reference

METRICS = ("fid", "isc", "kid", "prc")
BINARY_METRICS = ("fid", "kid", "prc")
DEFAULT_KID_SUBSET_SIZE = 1000
DEFAULT_KID_SUBSETS = 100
DEFAULT_ISC_SPLITS = 10


def default_cache_root() -> str:
    """torch-fidelity's own default: ``$TORCH_HOME/fidelity_cache``."""
    return os.path.join(torch.hub._get_torch_home(), "fidelity_cache")


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


def plan_metrics(
    metrics: Sequence[str],
    *,
    num_samples: int,
    num_reference: int | None,
    extractor: FeatureExtractorChoice,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
) -> MetricSettings:
    """Validate metric options before any work. KID draws subsets of ``kid_subset_size`` from both sets:
    when a set is smaller, the subset size is lowered to ``min(kid_subset_size, num_samples,
    num_reference)`` with a warning (documented adjustment); IS splits likewise."""
    metrics = check_metrics(metrics)
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 for FID / IS / KID, got {num_samples}")
    if any(m in BINARY_METRICS for m in metrics) and num_reference is not None and num_reference < 2:
        raise ValueError(f"the reference needs at least 2 images, it has {num_reference}")
    if "isc" in metrics and not extractor.provides_logits:
        raise ValueError(
            f"IS needs class logits, and feature extractor {extractor.label} has no classifier head"
        )
    if kid_subset_size < 2 or kid_subsets < 1:
        raise ValueError(
            f"kid_subset_size must be >= 2 and kid_subsets >= 1, got {kid_subset_size}, {kid_subsets}"
        )
    if "kid" in metrics:
        limit = min(num_samples, num_reference if num_reference is not None else num_samples)
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


def reference_cache_files(
    cache_name: str, extractor: FeatureExtractorChoice, metrics: Sequence[str], cache_root: str
) -> list[str]:
    """The files torch-fidelity reads from its cache for the reference, mirroring its lookup: FID alone
    needs only the statistics; other metrics need the features of every requested layer."""
    extractor_class = FEATURE_EXTRACTORS_REGISTRY[extractor.name]
    layers = {m: extractor_class.get_default_feature_layer_for_metric(m) for m in metrics}
    prefix = os.path.join(cache_root, f"{cache_name}-{extractor.name}")
    stat_file = f"{prefix}-stat-fid-{layers['fid']}.pt" if "fid" in layers else None
    if set(metrics) == {"fid"}:
        return [stat_file]
    files = [f"{prefix}-features-{layer}.pt" for layer in sorted(set(layers.values()))]
    return files + ([stat_file] if stat_file else [])


def compute_metrics(
    samples: torch.Tensor | Dataset,
    reference: ReferenceImages | str | torch.Tensor | Dataset | None,
    *,
    metrics: Sequence[str] = ("fid", "isc", "kid"),
    feature_extractor: str | FeatureExtractorChoice | torch.nn.Module = "inception-v3-compat",
    feature_extractor_weights_path: str | None = None,
    kid_subset_size: int = DEFAULT_KID_SUBSET_SIZE,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    isc_splits: int = DEFAULT_ISC_SPLITS,
    batch_size: int = 64,
    reference_max_images: int | None = None,
    cache_root: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Metrics of ``samples`` (uint8 N x 3 x H x W, or a Dataset of such tensors) against ``reference``.

    Keys: ``fid``, ``isc_mean``/``isc_std``, ``kid_mean``/``kid_std`` with Inception; ``fd_<label>``,
    ``is_<label>_*``, ``kd_<label>_*`` with another extractor; ``precision``/``recall``/``f_score``
    for ``prc``; plus ``reference_cache_hit``, ``reference_num_images`` and the settings used.
    """
    extractor = resolve_feature_extractor(feature_extractor, feature_extractor_weights_path)
    samples = ImageTensorDataset(samples) if isinstance(samples, torch.Tensor) else samples
    metrics = check_metrics(metrics)
    needs_reference = any(m in BINARY_METRICS for m in metrics)
    if needs_reference:
        if reference is None:
            raise ValueError("FID / KID / precision-recall need a reference")
        resolution = tuple(samples[0].shape[-2:])
        reference = load_reference(reference, max_images=reference_max_images, resolution=resolution)
    settings = plan_metrics(
        metrics,
        num_samples=len(samples),
        num_reference=len(reference) if needs_reference else None,
        extractor=extractor,
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        isc_splits=isc_splits,
    )
    return score_images(
        samples,
        reference if needs_reference else None,
        extractor,
        settings,
        batch_size=batch_size,
        cache_root=cache_root,
        seed=seed,
        device=device,
        progress=progress,
    )


def score_images(
    samples: Dataset,
    reference: ReferenceImages | None,
    extractor: FeatureExtractorChoice,
    settings: MetricSettings,
    *,
    batch_size: int,
    cache_root: str | None,
    seed: int,
    device: str | torch.device | None,
    progress: bool,
) -> dict:
    """One torch-fidelity call on inputs already validated by ``plan_metrics`` (no checks repeated)."""
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
    result: dict = {}
    if reference is not None:
        cache_name = reference_cache_name(reference, extractor)
        files = reference_cache_files(cache_name, extractor, settings.metrics, cache_root)
        result["reference_cache_hit"] = all(os.path.exists(f) for f in files)
        result["reference_num_images"] = len(reference)
        kwargs.update(input2=reference, input2_cache_name=cache_name)
    raw = torch_fidelity.calculate_metrics(**kwargs)
    names = extractor.metric_keys()
    result.update({ours: float(raw[theirs]) for theirs, ours in names.items() if theirs in raw})
    if "kid" in settings.metrics:
        result["kid_subset_size"] = settings.kid_subset_size
    return result
