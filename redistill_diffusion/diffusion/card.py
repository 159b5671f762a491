"""The card of a saved DDPM pipeline (teacher or student), written when training saves it: the description
(`model_card_description`) and README.md through diffusers' card template (`write_model_card`)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..memory.summary import MemorySummary
from ..model_cards import CARD_TAGS, PIPELINE_TAG, memory_markdown, save_card

logger = logging.getLogger(__name__)


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

# The student's code ships in unet/redistill_unet.py (a diffusers community component). With
# redistill-diffusion installed, redistill_diffusion.diffusion.pipeline_io.load_pipeline("{name}") loads it
# with the package's own class instead, without running the folder's code.
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

    from ..hub import hub_failure

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
    save_card(card, path)
    return path
