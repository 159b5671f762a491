"""Evaluation of diffusion pipelines with torch-fidelity: FID / IS / KID (or FD on a classifier's
features), sampling throughput and peak activation memory, side by side.

``evaluate_pipelines`` is the one-call API behind ``redistill eval``; ``generate_samples`` and
``compute_metrics`` are its two halves for scripts that already hold images or pipelines.
"""

from .evaluate import denoiser_peak_memory, evaluate_pipelines
from .extractors import (
    INCEPTION,
    ClassifierFeatureExtractor,
    FeatureExtractorChoice,
    load_timm_classifier,
    register_classifier_feature_extractor,
    resolve_feature_extractor,
)
from .metrics import METRICS, compute_metrics
from .reference import ImageTensorDataset, ReferenceImages, load_reference
from .report import format_metrics_table, save_sample_grid, write_report
from .sampling import SAMPLERS, generate_samples, load_pipeline, sample_images

__all__ = [
    "INCEPTION",
    "METRICS",
    "SAMPLERS",
    "ClassifierFeatureExtractor",
    "FeatureExtractorChoice",
    "ImageTensorDataset",
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
    "save_sample_grid",
    "write_report",
]
