"""Model-card content shared by diffusion and classification folders, in the Hub's conventions.

What a person (and the Hub's search) needs to find and trust a student: the tags, the command that
trained it, the peak-memory report in both conventions, and, once `redistill eval` has scored it, its
metrics as a ``model-index`` block (huggingface_hub's `EvalResult`), all through `ModelCard`.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .memory.summary import MemorySummary

logger = logging.getLogger(__name__)

CARD_TAGS = ("redistill", "knowledge-distillation", "peak-memory")
EVAL_BEGIN, EVAL_END = "<!-- redistill-eval -->", "<!-- /redistill-eval -->"
# `redistill eval` result keys (Inception names and FD-<extractor> names) -> model-index metric types.
_MEAN_SUFFIX = "_mean"
PIPELINE_TAG = "unconditional-image-generation"


def training_command(argv: Sequence[str], program: str) -> str:
    """The command line that trained a model, for its card; no option naming a token (whatever its
    spelling, `redaction.is_secret_name`) and no known token value is ever written."""
    from .redaction import drop_secret_options

    return " ".join([program, *(shlex.quote(w) for w in drop_secret_options(argv))])


MEMORY_CONVENTION_NAMES = {
    "exact": "exact (every tensor alive in an eager forward)",
    "paper": "paper (the ReDistill estimator)",
}


def _as_summary(memory: MemorySummary | Mapping[str, Any]) -> MemorySummary:
    """A summary as measured, or read back from a dictionary of this or an earlier version."""
    return memory if isinstance(memory, MemorySummary) else MemorySummary.from_dict(memory)


def memory_markdown(memory: MemorySummary | Mapping[str, Any]) -> str:
    """Teacher vs student peak activation memory, one table row per convention (the pipeline card)."""
    lines = ["| convention | teacher | student | ratio |", "|---|---|---|---|"]
    for comparison in _as_summary(memory):
        lines.append(
            f"| {MEMORY_CONVENTION_NAMES.get(comparison.convention, comparison.convention)} "
            f"| {comparison.teacher.peak_mb:.3f} MB | {comparison.student.peak_mb:.3f} MB "
            f"| {comparison.ratio:.3f}x |"
        )
    return "\n".join(lines)


def memory_details(
    memory: MemorySummary | Mapping[str, Any], student_label: str = "student"
) -> dict[str, str]:
    """The same summary as an entry of timm's card details (the classifier card), one line per convention."""
    return {comparison.convention: comparison.describe(student_label) for comparison in _as_summary(memory)}


def _metric_type(key: str) -> str | None:
    """The model-index metric type of a `redistill eval` result key, or None for non-metrics."""
    if key in ("fid", "precision", "recall", "accuracy", "top1", "top5") or key.startswith("fd_"):
        return key
    if key in ("denoise_loss", "denoise_loss_low", "denoise_loss_mid", "denoise_loss_high"):
        return key  # the held-out denoising loss of `redistill eval --metrics denoise` and its noise bands
    if key.endswith(_MEAN_SUFFIX) and key.split("_")[0] in ("isc", "is", "kid", "kd"):
        return key[: -len(_MEAN_SUFFIX)]
    return None


def _display_name(metric_type: str) -> str:
    """fid -> FID, fd_resnet18 -> FD-resnet18 (a Frechet distance on another extractor's features)."""
    prefix, _, extractor = metric_type.partition("_")
    names = {"fid": "FID", "isc": "IS", "kid": "KID", "fd": "FD", "is": "IS", "kd": "KD"}
    if prefix in names and (not extractor or prefix in ("fd", "is", "kd")):
        return names[prefix] + (f"-{extractor}" if extractor else "")
    return metric_type.replace("_", " ")


def eval_results(metrics: Mapping[str, Any], *, task_type: str, dataset_name: str | None = None) -> list:
    """huggingface_hub `EvalResult`s for the metrics of one model; each names how it was measured."""
    from huggingface_hub import EvalResult

    how = {
        k: metrics[k]
        for k in ("num_samples", "sampler", "num_inference_steps", "feature_extractor", "seed", "resolution")
        if metrics.get(k) is not None
    }
    extractor = how.get("feature_extractor")
    described = ", ".join(
        part
        for part in (
            extractor,
            f"{how['num_samples']} samples" if "num_samples" in how else None,
            f"{str(how.get('sampler', '')).upper()} {how['num_inference_steps']} steps".strip()
            if "num_inference_steps" in how
            else None,
        )
        if part
    )
    dataset = dataset_name or str(metrics.get("reference") or "unknown")
    results = []
    for key, value in metrics.items():
        metric_type = _metric_type(key)
        if metric_type is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isfinite(float(value)):
            continue
        name = _display_name(metric_type) + (f" ({described})" if described else "")
        results.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=metric_type,
                metric_value=float(value),
                metric_name=name,
                metric_config=extractor,
                metric_args=how or None,
            )
        )
    return results


def check_card_folder(folder: str | os.PathLike, *, needs_card: bool = True) -> Path:
    """One-line ValueError for a folder that is not a saved pipeline or classifier (or has no card)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"{folder} is not a folder (a saved pipeline or classifier folder is needed)")
    if not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
        raise ValueError(
            f"{folder} is not a pipeline folder (no model_index.json) nor a model folder (no config.json)"
        )
    if needs_card and not (path / "README.md").is_file():
        raise ValueError(
            f"{folder} has no model card (README.md) to update; it is written when training saves the model"
        )
    return path


def _metrics_markdown(metrics: Mapping[str, Any], results: Sequence) -> str:
    rows = [f"| {r.metric_name} | {r.metric_value:.4g} |" for r in results]
    reference = metrics.get("reference")
    lines = [EVAL_BEGIN, "## Evaluation (`redistill eval`)", "", "| metric | value |", "|---|---|", *rows, ""]
    if reference:
        lines.append(f"Reference images: `{reference}`.")
    if metrics.get("peak_bytes") is not None:
        lines.append(
            f"Peak activation memory of one denoiser forward (batch 1, exact): {metrics['peak_bytes'] / 1024**2:.3f} MB."
        )
    lines.append(EVAL_END)
    return "\n".join(lines)


def update_model_card(
    folder: str | os.PathLike,
    metrics: Mapping[str, Any],
    *,
    task_type: str = "unconditional-image-generation",
    dataset_name: str | None = None,
) -> Path:
    """Write ``metrics`` into the folder's README.md: a ``model-index`` block and an Evaluation section.

    Metrics of the same type and dataset replace the earlier ones; others are kept. Pushing the
    folder again (``push_folder_to_hub``) updates the Hub card.
    """
    from huggingface_hub import ModelCard

    path = check_card_folder(folder) / "README.md"
    card = ModelCard.load(str(path))
    new = eval_results(metrics, task_type=task_type, dataset_name=dataset_name)
    if not new:
        raise ValueError(f"no metrics to write into {path} (got {', '.join(metrics) or 'nothing'})")
    fresh = {(r.metric_type, r.dataset_type) for r in new}
    kept = [r for r in (card.data.eval_results or []) if (r.metric_type, r.dataset_type) not in fresh]
    card.data.eval_results = kept + new
    if not card.data.model_name:
        card.data.model_name = Path(folder).resolve().name
    section = _metrics_markdown(metrics, new)
    text = card.text
    if EVAL_BEGIN in text and EVAL_END in text:
        start, end = text.index(EVAL_BEGIN), text.index(EVAL_END) + len(EVAL_END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    card.text = text
    save_card(card, path)
    return path


def save_card(card, path: Path) -> None:
    """``card.save`` with every known token value masked (`redaction.redact_text`)."""
    from .redaction import redact_text

    path.write_text(redact_text(str(card)), encoding="utf-8", newline="")
