"""FID and KID of the parity study (issue 22): >= 2,000 samples per pipeline against 10,000 training images,
with the real-data floor at the same sample count and a bootstrap interval.

Used by ``bench_parity.py fid``. Every set's Inception features (the TF-FID network, as ``redistill eval``
computes them) go through the library's chunked, resumable feature cache under
``benchmarks/_work/parity/fid_cache``, so a killed run loses at most one chunk of 500 images and the
10,000-image reference is computed once. Samples are kept as uint8 ``.npy`` files (no pickle) next to it.

The interval is a bootstrap over the samples (the reference held fixed): FID is recomputed on resampled
sample features, and +-1.96 standard deviations of those values give the 95% interval (its half-width is
reported; the test checks it against the spread of FID over independent sample sets). The
trace term uses sqrt(S_r) S sqrt(S_r), whose eigenvalues (symmetric, ``eigvalsh``) are those of S S_r, so
each resample costs one symmetric eigen-decomposition instead of a general matrix square root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FID_REFERENCE_IMAGES = 10_000
FID_NUM_SAMPLES = 2_000
FID_SAMPLER = "ddim"
FID_STEPS = 50
BOOTSTRAP_RESAMPLES = 50  # ~3 s each at 2048 features on one CPU core; the sd of 50 is within ~10%


@dataclass
class ReferenceStatistics:
    """The reference's features and what every FID against it reuses."""

    features: torch.Tensor
    mu: np.ndarray
    sigma: np.ndarray
    sqrt_sigma: np.ndarray


def _statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def reference_statistics(features: torch.Tensor) -> ReferenceStatistics:
    f = features.double().numpy()
    mu, sigma = _statistics(f)
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    sqrt_sigma = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T
    return ReferenceStatistics(features, mu, sigma, sqrt_sigma)


def fid(features: np.ndarray, reference: ReferenceStatistics) -> float:
    """Frechet distance of ``features`` (N x 2048, float64) to the reference."""
    mu, sigma = _statistics(features)
    product = reference.sqrt_sigma @ sigma @ reference.sqrt_sigma
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    return float(
        ((mu - reference.mu) ** 2).sum() + np.trace(sigma) + np.trace(reference.sigma) - 2 * trace_sqrt
    )


def bootstrap_fid(
    features: torch.Tensor,
    reference: ReferenceStatistics,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """The point FID and a 95% interval, +-1.96 standard deviations of FID over bootstrap resamples of the
    sample set. (Resampling with replacement repeats images, which biases each resample's FID upwards, so
    the resamples' spread is used, not their percentiles.)"""
    f = features.double().numpy()
    rng = np.random.default_rng(seed)
    values = np.array([fid(f[rng.integers(0, len(f), len(f))], reference) for _ in range(resamples)])
    point, half_width = fid(f, reference), 1.96 * float(values.std(ddof=1))
    return {
        "fid": point,
        "fid_ci95": half_width,
        "fid_ci95_low": point - half_width,
        "fid_ci95_high": point + half_width,
        "bootstrap_resamples": resamples,
    }


def kid(features: torch.Tensor, reference: ReferenceStatistics, subset_size: int = 1000) -> dict[str, float]:
    """torch-fidelity's KID (100 subsets) of the features against the reference's."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    out = kid_features_to_metric(
        features,
        reference.features,
        kid_subsets=100,
        kid_subset_size=min(subset_size, len(features), len(reference.features)),
        verbose=False,
        rng_seed=0,
    )
    return {
        "kid_mean": out["kernel_inception_distance_mean"],
        "kid_std": out["kernel_inception_distance_std"],
    }


def set_features(images: torch.utils.data.Dataset, cache_name: str, cache_root: Path) -> torch.Tensor:
    """Inception pool3 features of an image set, through the library's resumable cache."""
    from redistill_diffusion.evaluation import resolve_feature_extractor
    from redistill_diffusion.evaluation.feature_cache import cache_features, features_file, metric_layers

    extractor = resolve_feature_extractor()
    metrics = ("fid", "kid")
    cache_features(images, cache_name, extractor, metrics, cache_root=str(cache_root), description=cache_name)
    layer = metric_layers(extractor, ["fid"])[0]
    return torch.load(features_file(str(cache_root), cache_name, extractor, layer), weights_only=True)


def sample_file(pipeline_dir: Path, path: Path, num_samples: int, seed: int) -> torch.Tensor:
    """``num_samples`` DDIM samples of a pipeline as uint8 N x 3 x H x W, kept in ``path`` (.npy)."""
    if path.is_file():
        images = np.load(path, allow_pickle=False)
        if len(images) == num_samples:
            return torch.from_numpy(images)
    from redistill_diffusion.diffusion.sampling import sample_images

    images = sample_images(
        pipeline_dir,
        num_samples,
        sampler=FID_SAMPLER,
        num_inference_steps=FID_STEPS,
        batch_size=100,
        seed=seed,
    ).images
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, images.numpy(), allow_pickle=False)
    partial.replace(path)
    return images


def image_statistics(images: torch.Tensor) -> dict[str, float]:
    """What FID sees besides detail, on uint8 N x 3 x H x W: ``contrast`` (each image's pixel standard deviation,
    averaged), ``saturation`` (max - min over the colour channels per pixel, /255) and ``brightness`` (mean)."""
    x = images.float()
    return {
        "contrast": x.flatten(1).std(dim=1).mean().item(),
        "saturation": ((x.amax(dim=1) - x.amin(dim=1)) / 255).mean().item(),
        "brightness": x.mean().item(),
    }


def score(features: torch.Tensor, reference: ReferenceStatistics) -> dict[str, Any]:
    return {**bootstrap_fid(features, reference), **kid(features, reference), "num_samples": len(features)}
