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
    _save_card(card, path)
    return path


# ---------------------------------------------------------------------------------------------
# The card of a saved DDPM pipeline (teacher or student), written when training saves it
# ---------------------------------------------------------------------------------------------
def model_card_description(
    *,
    title: str,
    teacher: str | None,
    method: str | None,
    stem_stride: int | None,
    memory: MemorySummary | Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    sample_grid: str | None = None,
    details: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> str:
    """The markdown body of the card: what the model is, how much memory it saves, how to use it.

    ``memory``: a ``MemorySummary`` (or its dictionary, of this or an earlier version)."""
    lines = [f"# {title}", ""]
    if teacher:
        lines += [
            f"A ReDistill student distilled from **{teacher}** with **{method}**: its stem downsamples by "
            f"**{stem_stride}x**, so the largest activations shrink while every later layer keeps the teacher's shape "
            "(redistill-diffusion, after Chen et al., *ReDistill: Residual Encoded Distillation for Peak Memory "
            "Reduction of CNNs*, TMLR 2025).",
            "",
        ]
    else:
        lines += ["A DDPM UNet trained with redistill-diffusion (a teacher for ReDistill students).", ""]
    rows = [
        ("teacher", teacher or "-"),
        ("method", method or "plain DDPM"),
        ("stem stride", stem_stride or 1),
    ]
    rows += list((details or {}).items())
    lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in rows] + [""]
    if memory:
        lines += [
            "## Peak activation memory (batch 1, weights excluded)",
            "",
            memory_markdown(memory),
            "",
            "Measured with `redistill_diffusion.memory` (`redistill memory`): *exact* follows every tensor alive "
            "during a real forward pass, *paper* is the ReDistill paper's estimator.",
            "",
        ]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [
            f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            for key, value in metrics.items()
        ]
        lines.append("")
    if sample_grid:
        lines += ["## Samples", "", f"![samples]({sample_grid})", ""]
    if command:
        lines += ["## Training command", "", "```bash", command, "```", ""]
    return "\n".join(lines)


USAGE_SNIPPET = """from diffusers import DiffusionPipeline

# The student's code ships in unet/redistill_unet.py (a diffusers community component); with
# redistill-diffusion installed and imported, trust_remote_code is not needed.
pipeline = DiffusionPipeline.from_pretrained("{name}", trust_remote_code=True)
images = pipeline(batch_size=4, num_inference_steps=1000).images"""

LIMITATIONS = (
    "A student matches its teacher's quality only as far as its training budget allowed; check the sample grid "
    "and the metrics above. Peak memory is per sample (batch 1) and excludes weights."
)


def write_model_card(
    output_dir: str | os.PathLike,
    description: str,
    *,
    base_model: str | None = None,
    tags: Sequence[str] = (),
    repo_id: str | None = None,
    token: str | None = None,
    training_details: str | None = None,
) -> Path:
    """README.md through diffusers' model card utilities (the template its training scripts use).

    With ``repo_id`` (when pushing) an existing card of that repo is reused, as diffusers does;
    otherwise the card is made from the template without touching the network.
    """
    from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card

    from .hub import hub_failure

    card = None
    if repo_id:
        try:
            card = load_or_create_model_card(
                repo_id_or_path=repo_id,
                token=token,
                from_training=True,
                base_model=base_model,
                model_description=description,
                license="apache-2.0",
                inference=True,
            )
        except Exception as error:
            reason = hub_failure(error)
            if reason is None:
                raise
            # The trained model is saved already; a card the Hub cannot give back must not lose it.
            logger.warning("Could not read the card of Hub repo %s (%s); writing a new one.", repo_id, reason)
    if card is None:
        from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH
        from huggingface_hub import ModelCard, ModelCardData

        card = ModelCard.from_template(
            card_data=ModelCardData(
                license="apache-2.0",
                library_name="diffusers",
                pipeline_tag=PIPELINE_TAG,
                inference=True,
                base_model=base_model,
            ),
            template_path=MODEL_CARD_TEMPLATE_PATH,
            model_description=description,
        )
    card = populate_model_card(card, tags=[*CARD_TAGS, "diffusers", PIPELINE_TAG, *tags])
    card.data.pipeline_tag = PIPELINE_TAG
    card.data.tags = list(dict.fromkeys(card.data.tags))  # a reused Hub card already has ours
    # Fill the template's placeholders with what we know.
    card.text = (
        card.text.replace(
            "# TODO: add an example code snippet for running this diffusion pipeline",
            USAGE_SNIPPET.format(name=repo_id or "path/to/this/folder"),
        )
        .replace("[TODO: provide examples of latent issues and potential remediations]", LIMITATIONS)
        .replace(
            "[TODO: describe the data used to train the model]", training_details or "See the table above."
        )
    )
    path = Path(output_dir) / "README.md"
    _save_card(card, path)
    return path


def _save_card(card, path: Path) -> None:
    """``card.save`` with every known token value masked (`redaction.redact_text`)."""
    from .redaction import redact_text

    path.write_text(redact_text(str(card)), encoding="utf-8", newline="")
