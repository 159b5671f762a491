"""Save, load and push classifiers the way timm does: ``model.safetensors`` + ``config.json`` + card.

The folder is what ``timm.models.push_to_hf_hub`` uploads (timm's ``save_for_hf`` writes the
weights and config), with one extra key in ``config.json``: ``"redistill"``, the `ClassifierSpec`
(architecture arguments, CIFAR stem, stride plan, RED blocks, teacher, distillation pairs).
`load_classifier` rebuilds the model from that key alone, so no training state is needed.

Plain ``timm.create_model("local-dir:...")`` would rebuild the teacher's strides (timm knows
nothing of the surgery), which is why students must be loaded with `load_classifier`; the model
card says so.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..hub import is_hub_id
from ..memory import MemorySummary
from ..model_cards import CARD_TAGS as SHARED_CARD_TAGS
from ..model_cards import memory_details
from ..redaction import redact_text
from .spec import ClassifierSpec, build_classifier, spec_of
from .surgery import StridePlan

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_KEY = "redistill"
CARD_TAGS = ("image-classification", "timm", *SHARED_CARD_TAGS)


def _data_config(
    model: nn.Module, spec: ClassifierSpec, overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    if spec.input_size is not None:
        config["input_size"] = tuple(spec.input_size)
    config.update(overrides or {})
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items()}


def save_classifier(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    model_card: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` (timm's, plus the ``redistill`` spec) and, when
    ``model_card`` is given, ``README.md``. Returns the folder."""
    from timm.models import save_for_hf

    spec = spec_of(model)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    model_config: dict[str, Any] = {CONFIG_KEY: spec.to_dict()}
    if label_names:
        model_config["label_names"] = list(label_names)
    was_training = model.training
    model.eval()
    try:
        save_for_hf(
            model,
            str(folder),
            model_config=model_config,
            safe_serialization=True,
            data_config=_data_config(model, spec, data_config),
        )
    finally:
        model.train(was_training)
    if model_card is not None:
        (folder / "README.md").write_text(
            redact_text(classifier_model_card(model_card, folder.name)), encoding="utf-8"
        )
    return folder


def read_classifier_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved classifier folder (or the file itself)."""
    path = Path(path)
    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_NAME}; pass a folder written by save_classifier.")
    from ..files import read_json

    return read_json(file)  # a broken file is named in the error


def is_saved_classifier(folder: Path) -> bool:
    """Whether a local folder was written by `save_classifier` (its config.json has the ``redistill`` spec):
    a student in it needs `load_classifier`, timm alone would rebuild the teacher's strides."""
    file = Path(folder) / CONFIG_NAME
    if not file.is_file():
        return False
    from ..files import read_json

    return CONFIG_KEY in read_json(file)


def spec_from_config(config: Mapping[str, Any]) -> ClassifierSpec:
    """The spec in a config.json: our ``redistill`` key, or a plain timm config (a teacher)."""
    if CONFIG_KEY in config:
        return ClassifierSpec.from_dict(config[CONFIG_KEY])
    architecture = config.get("architecture")
    if not architecture:
        raise ValueError(
            "config.json has neither a 'redistill' key nor a timm 'architecture'; it is not a classifier folder."
        )
    args = dict(config.get("model_args") or {})
    args.setdefault("num_classes", config.get("num_classes", 1000))
    return ClassifierSpec(architecture, args)


def _local_folder(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not is_hub_id(name_or_path):
        raise FileNotFoundError(
            f"{name_or_path} is not a classifier folder (nor a Hub id: name or owner/name)."
        )
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(str(name_or_path), revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    )


def load_classifier(
    name_or_path: str | os.PathLike, device: str | torch.device | None = None, revision: str | None = None
) -> nn.Module:
    """Rebuild a saved teacher or student (strides, stem and RED blocks included) and load its weights."""
    folder = _local_folder(name_or_path, revision)
    config = read_classifier_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME} (only safetensors weights are loaded).")
    model = build_classifier(spec_from_config(config))
    try:
        state = load_file(str(weights))
    except SafetensorError as error:  # truncated or not safetensors at all
        raise ValueError(f"{weights} is not a readable safetensors file ({error}).") from None
    model.load_state_dict(state)
    if device is not None:
        model.to(device)
    return model.eval()


def _format_plan(plan: Mapping[str, Any] | None) -> str:
    """`StridePlan.notation` of a plan stored as a dict (a spec's or its teacher's), "-" for none."""
    return StridePlan.from_dict(plan).notation() if plan else "-"


def card_for(
    model: nn.Module,
    *,
    distiller: str | None = None,
    dataset: str | None = None,
    metrics: Mapping[str, float] | None = None,
    memory: MemorySummary | Mapping[str, Any] | None = None,
    command: str | None = None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """A timm-style model card dict (``details``, ``usage``, ...) describing a saved classifier.

    ``command`` (the training command) and ``base_model`` (the teacher's Hub id, when it has one) go
    into the card; ``metrics`` also into its ``model-index`` block; ``memory`` (a ``MemorySummary``, or its
    dictionary of this or an earlier version) into its details.
    """
    spec = spec_of(model)
    is_student = spec.teacher is not None
    details: dict[str, Any] = {
        "Model Type": "Image classification" + (" (ReDistill student)" if is_student else ""),
        "Architecture": f"timm `{spec.architecture}` {spec.model_args}"
        + (", CIFAR stem" if spec.cifar_stem else ""),
        "Strides (stem conv-pool/stages)": _format_plan(
            spec.stride_plan.to_dict() if spec.stride_plan else None
        ),
        "Params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
    }
    if spec.input_size:
        details["Image size"] = "x".join(str(s) for s in spec.input_size[1:])
    if is_student:
        details["Teacher"] = (
            f"timm `{spec.teacher['architecture']}`, strides {_format_plan(spec.teacher.get('stride_plan'))}"
        )
        details["Distillation"] = distiller or "-"
        details["RED blocks"] = [f"{b['tap']} ({b['channels']} ch)" for b in spec.red_blocks] or "none"
        if spec.distillation_pairs:
            details["Distillation pairs (student <-> teacher)"] = [
                f"{s} <-> {t}" for s, t in spec.distillation_pairs
            ]
    if dataset:
        details["Dataset"] = dataset
    if memory:
        details["Peak activation memory (batch 1, fp32)"] = memory_details(memory, student_label="this model")
    if metrics:
        details["Metrics"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
    usage = (
        "```python\n"
        "from redistill_diffusion.classification import load_classifier\n\n"
        'model = load_classifier("<this folder or repo id>")  # strides and RED blocks restored\n'
        "logits = model(images)  # normalised as in config.json's pretrained_cfg\n"
        "```\n"
    )
    if is_student:
        usage += (
            "\nLoad it with `load_classifier`: `timm.create_model` would rebuild the teacher's strides, "
            "since the stride plan lives in the `redistill` key of config.json.\n"
        )
    description = (
        "A ReDistill student: the teacher's blocks and widths with the downsampling moved into the stem, "
        "which cuts the peak activation memory; trained with residual encoded distillation "
        "(Chen et al., ReDistill, TMLR 2025) using redistill-diffusion."
        if is_student
        else "A timm classifier trained with redistill-diffusion (a teacher for ReDistill students)."
    )
    if command:
        usage += f"\n### Training command\n\n```bash\n{command}\n```\n"
    return {
        "description": description,
        "details": details,
        "metrics": dict(metrics or {}),
        "dataset": dataset,
        "base_model": base_model,
        "usage": usage,
        "tags": list(CARD_TAGS),
        "library_name": "redistill-diffusion" if is_student else "timm",
        "license": "apache-2.0",
    }


def classifier_model_card(card: Mapping[str, Any], model_name: str) -> str:
    """README.md text with timm's own card generator (same front matter and sections as timm uploads)."""
    from timm.models._hub import generate_readme

    card = dict(card)
    details = dict(card.get("details") or {})
    dataset = details.pop("Dataset", None)
    text = generate_readme({**card, "details": details}, model_name, task_name="image-classification")
    if (
        dataset
    ):  # timm lower-cases dataset names into the front matter; keep ours out of it (paths are not Hub ids)
        text = text.replace("\n## Model Details\n", f"\n## Model Details\n- **Dataset:** {dataset}\n", 1)
    return _with_hub_metadata(text, card, model_name)


def _with_hub_metadata(text: str, card: Mapping[str, Any], model_name: str) -> str:
    """timm's card plus what timm's generator has no field for: base_model and a model-index block."""
    from huggingface_hub import ModelCard

    from ..model_cards import eval_results

    model_card = ModelCard(text)
    if card.get("base_model"):
        model_card.data.base_model = card["base_model"]
    results = eval_results(
        card.get("metrics") or {}, task_type="image-classification", dataset_name=card.get("dataset")
    )
    if results:
        model_card.data.eval_results = results
        model_card.data.model_name = model_name
    return str(model_card)


def push_classifier_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload ReDistill classifier",
    model_card: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    api=None,
):
    """Save to a temporary folder (weights, config, card) and upload it with the shared
    `hub.push_folder_to_hub`. ``api``: a ``huggingface_hub.HfApi`` or a stand-in.

    The folder is timm's own (`save_classifier` calls ``timm.models.save_for_hf``); the upload is not
    ``timm.models.push_to_hf_hub``, which writes a README only when the repo has none and from timm's
    template alone (no ``base_model``, no model-index, no stride plan), also uploads pickled weights
    by default, checks no repo id first, and builds its own ``HfApi``. The token is never printed."""
    from ..hub import push_folder_to_hub

    card = dict(model_card) if model_card is not None else card_for(model)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_classifier(
            model,
            Path(tmp) / repo_id.split("/")[-1],
            label_names=label_names,
            data_config=data_config,
            model_card=card,
        )
        return push_folder_to_hub(
            folder, repo_id, token=token, private=private, commit_message=commit_message, api=api
        )


__all__ = [
    "card_for",
    "classifier_model_card",
    "load_classifier",
    "push_classifier_to_hub",
    "read_classifier_config",
    "save_classifier",
    "spec_from_config",
]
