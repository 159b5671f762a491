"""Load teachers, save students as diffusers pipelines with a model card, push folders to the Hub.

A trained student is saved exactly as diffusers saves a DDPM: a ``DDPMPipeline`` folder
(``model_index.json``, ``unet/`` with safetensors, ``scheduler/``) plus a ``README.md`` built with
diffusers' model card utilities, and the student's code as a community component
(`models.remote_code`): ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it
anywhere, and without ``trust_remote_code`` in a process that imported ``redistill_diffusion``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .model_cards import CARD_TAGS, memory_markdown
from .progress import announce

logger = logging.getLogger(__name__)

PIPELINE_TAG = "unconditional-image-generation"
HUB_IGNORE_PATTERNS = ("checkpoint-*", "checkpoint-*/**", "logs/**", "*.tmp", "*.tmp/**")


# ---------------------------------------------------------------------------------------------
# Loading teachers
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    from .files import read_json

    return read_json(path)  # a broken file is named in the error


def _unet_class(class_name: str | None):
    from diffusers import UNet2DModel

    if class_name in (None, "UNet2DModel"):
        return UNet2DModel
    if class_name == "ReDistillUNet2DModel":
        from .models.unet_student import ReDistillUNet2DModel

        return ReDistillUNet2DModel
    raise ValueError(
        f"The teacher is a {class_name}; ReDistill derives students from diffusers UNet2DModel teachers "
        "(DDPM pipelines). Pass a DDPM pipeline or a UNet2DModel folder."
    )


def load_teacher(name_or_path: str, cache_dir: str | None = None, revision: str | None = None):
    """Load a frozen-to-be teacher UNet and the noise scheduler that came with it (or None).

    Accepts a DDPM pipeline folder or Hub id (``unet/`` + ``scheduler/``), a UNet folder
    (``config.json`` + weights) or a Hub model id of either. Raises one clear error otherwise.
    """
    from diffusers import DDPMScheduler

    if not name_or_path:
        raise ValueError(
            "No teacher given: pass --teacher_model_name_or_path (a DDPM pipeline or UNet2DModel folder/Hub id)."
        )
    path = Path(name_or_path)
    looks_local = path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        path = path.expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"Teacher {name_or_path!r} not found; pass a DDPM pipeline folder (model_index.json) or a UNet folder "
                "(config.json), or train one with examples/train_ddpm_teacher.py."
            )
        if (path / "model_index.json").is_file():
            unet_dir, scheduler_dir = path / "unet", path / "scheduler"
        elif (path / "config.json").is_file():
            unet_dir, scheduler_dir = path, None
        else:
            raise FileNotFoundError(
                f"Teacher folder {name_or_path!r} has neither model_index.json (a pipeline) nor config.json (a UNet)."
            )
        if not (unet_dir / "config.json").is_file():
            raise FileNotFoundError(f"Teacher pipeline {name_or_path!r} has no unet/config.json.")
        cls = _unet_class(_read_json(unet_dir / "config.json").get("_class_name"))
        try:
            unet = cls.from_pretrained(str(unet_dir))
        except OSError as error:
            raise FileNotFoundError(
                f"Teacher {name_or_path!r}: could not load its UNet weights ({error})."
            ) from error
        scheduler = (
            DDPMScheduler.from_pretrained(str(scheduler_dir))
            if scheduler_dir and scheduler_dir.is_dir()
            else None
        )
        return unet, scheduler

    # A Hub id: a pipeline repo (unet/ subfolder) or a bare UNet repo.
    from diffusers import UNet2DModel

    errors = []
    for subfolder in ("unet", None):
        try:
            unet = UNet2DModel.from_pretrained(
                name_or_path, subfolder=subfolder, cache_dir=cache_dir, revision=revision
            )
        except (OSError, ValueError) as error:
            errors.append(str(error).splitlines()[0])
            continue
        scheduler = None
        if subfolder:
            try:
                scheduler = DDPMScheduler.from_pretrained(
                    name_or_path, subfolder="scheduler", cache_dir=cache_dir, revision=revision
                )
            except (OSError, ValueError):
                scheduler = None
        return unet, scheduler
    raise FileNotFoundError(
        f"Could not load teacher {name_or_path!r} (offline or not a UNet2DModel repo: {errors[-1]}); "
        "pass a local DDPM pipeline folder or download it first."
    )


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def save_ddpm_pipeline(unet, scheduler, output_dir: str | os.PathLike):
    """Save ``unet`` + ``scheduler`` as a DDPMPipeline folder (safetensors) and return the pipeline.

    A student's folder also gets its component file (`models.remote_code`), so it loads with
    ``trust_remote_code=True`` where this package is not installed.
    """
    from diffusers import DDPMPipeline

    from .models.remote_code import make_pipeline_self_contained

    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    try:
        make_pipeline_self_contained(output_dir)
    except ValueError as error:  # the weights are saved; the folder still loads with the package imported
        logger.warning(
            "Student saved without its component file (load it with redistill_diffusion imported): %s", error
        )
    return pipeline


def save_image_grid(images: Sequence, path: str | os.PathLike, columns: int | None = None) -> Path:
    """Save PIL images (same size) as one PNG grid."""
    from PIL import Image

    images = list(images)
    if not images:
        raise ValueError("No images to put in a grid.")
    columns = columns or max(1, int(round(len(images) ** 0.5)))
    rows = (len(images) + columns - 1) // columns
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height))
    for index, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((index % columns) * width, (index // columns) * height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _format_mb(num_bytes: float | None) -> str:
    return "n/a" if num_bytes is None else f"{num_bytes / 1024**2:.3f} MB"


def model_card_description(
    *,
    title: str,
    teacher: str | None,
    method: str | None,
    stem_stride: int | None,
    memory: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    sample_grid: str | None = None,
    details: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> str:
    """The markdown body of the card: what the model is, how much memory it saves, how to use it."""
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
    if memory and memory.get("all"):
        lines += [
            "## Peak activation memory (batch 1, weights excluded)",
            "",
            memory_markdown(memory["all"]),
            "",
            "Measured with `redistill_diffusion.memory` (`redistill memory`): *exact* follows every tensor alive "
            "during a real forward pass, *paper* is the ReDistill paper's estimator.",
            "",
        ]
    elif memory:
        lines += [
            "## Peak activation memory (batch 1, weights excluded)",
            "",
            "| model | peak |",
            "|---|---|",
        ]
        for key in ("teacher_peak_bytes", "student_peak_bytes"):
            if memory.get(key) is not None:
                lines.append(f"| {key.split('_')[0]} | {_format_mb(memory[key])} |")
        if memory.get("teacher_peak_bytes") and memory.get("student_peak_bytes"):
            lines.append(
                f"| reduction | {memory['teacher_peak_bytes'] / memory['student_peak_bytes']:.2f}x |"
            )
        if memory.get("convention"):
            lines.append(
                f"\nMeasured with `redistill_diffusion.memory` (convention: {memory['convention']})."
            )
        lines.append("")
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

    if repo_id:
        card = load_or_create_model_card(
            repo_id_or_path=repo_id,
            token=token,
            from_training=True,
            base_model=base_model,
            model_description=description,
            license="apache-2.0",
            inference=True,
        )
    else:
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
    card.save(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# Hub
# ---------------------------------------------------------------------------------------------
def check_repo_id(repo_id: str) -> str:
    """One-line ValueError for a malformed Hub repo id (huggingface_hub's own rules), before any upload."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"malformed Hub repo id {repo_id!r}: {str(error).splitlines()[0]}") from None
    return repo_id


def create_hub_repo(repo_id: str, token: str | None = None, private: bool = False, api=None) -> str:
    """Create (or reuse) the model repo; returns its id. ``api``: a huggingface_hub.HfApi or stand-in."""
    check_repo_id(repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    return getattr(url, "repo_id", None) or repo_id


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload ReDistill model",
    api=None,
    ignore_patterns: Sequence[str] = HUB_IGNORE_PATTERNS,
):
    """Create the repo and upload ``folder`` (checkpoints and logs left out). The token is never logged.

    A malformed repo id or a folder that is no saved pipeline/model is a one-line ValueError, before
    anything is created or uploaded.
    """
    from .model_cards import check_card_folder

    check_repo_id(repo_id)
    check_card_folder(folder, needs_card=False)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    repo_id = create_hub_repo(repo_id, private=private, api=api)
    announce(f"Uploading {folder} to the Hub repo {repo_id}")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=list(ignore_patterns),
        repo_type="model",
    )


def sample_images(
    pipeline,
    num_images: int,
    seed: int = 0,
    num_inference_steps: int = 1000,
    device=None,
    progress: str | None = None,
):
    """Generate ``num_images`` PIL images with a fixed seed (deterministic for a given pipeline).

    ``progress``: a label for diffusers' denoising-step bar; ``None`` keeps it off.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if device is not None:
        pipeline.to(device)
    if progress:
        pipeline.set_progress_bar_config(disable=False, desc=progress, leave=False)
    else:
        pipeline.set_progress_bar_config(disable=True)
    return pipeline(
        batch_size=num_images, generator=generator, num_inference_steps=num_inference_steps
    ).images
