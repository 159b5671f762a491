"""Where UNet and scheduler configs come from: a local path, the Hub, or the copies shipped in the package.

One resolver for every entry point that starts from a config rather than from weights (``redistill
memory``, training a teacher from scratch, the benchmarks), so a name means the same thing everywhere.
A local path always wins, then a shipped name (``tiny-ddpm-32``), then the Hub; the Hub ids in
`SHIPPED_UNET_CONFIGS` fall back to their shipped copy when the Hub cannot be reached.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..hub import UNET_SUBFOLDERS, is_hub_id, local_unet_folder

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# Hub ids whose pipeline configs (no weights) ship with the package, for machines without internet.
SHIPPED_HUB_IDS = {
    "google/ddpm-cifar10-32": "google-ddpm-cifar10-32",
    "google/ddpm-cat-256": "google-ddpm-cat-256",
}
SHIPPED_UNET_CONFIGS = {
    hub_id: CONFIG_DIR / name / "unet" / "config.json" for hub_id, name in SHIPPED_HUB_IDS.items()
}
TEACHER_UNET_CLASSES = ("UNet2DModel",)


@dataclass
class LoadedConfig:
    config: dict[str, Any]
    source: str  # where it came from, in words, for reports

    def model_kwargs(self) -> dict[str, Any]:
        """The config without diffusers' bookkeeping keys (``_class_name``, ``_diffusers_version``, ...)."""
        return {k: v for k, v in self.config.items() if not k.startswith("_")}


def check_unconditional(config: Any, what: str) -> None:
    """Refuse a class-conditional UNet where the package trains or samples it, in one line.

    Training, sample grids, the held-out loss and evaluation call the UNet without class labels, as
    diffusers' `DDPMPipeline` (the saved format) does, so a UNet with ``num_class_embeds`` or a
    ``class_embed_type`` would fail at its first step. Deriving and measuring one (`from_teacher`,
    ``redistill memory``) does work: that path passes class labels.
    """
    classes = config.get("num_class_embeds")
    embedding = config.get("class_embed_type")
    if classes is None and embedding is None:
        return
    kind = f"num_class_embeds {classes}" if classes is not None else f"class_embed_type {embedding!r}"
    raise ValueError(
        f"{what} is a class-conditional UNet2DModel ({kind}); training and evaluation take unconditional "
        "UNets only (DDPMPipeline samples without class labels): pass an unconditional teacher or config."
    )


def shipped_names() -> list[str]:
    return sorted(p.name for p in CONFIG_DIR.iterdir() if (p / "unet" / "config.json").is_file())


def _load_local(path: Path) -> LoadedConfig:
    from diffusers import UNet2DModel

    if path.is_file():
        return LoadedConfig(UNet2DModel.load_config(str(path)), f"config file {path}")
    folder = local_unet_folder(path)  # a pipeline's unet/ first, then the folder itself: as load_teacher
    if folder is not None:
        candidate = folder / "config.json"
        return LoadedConfig(UNet2DModel.load_config(str(candidate)), f"config {candidate}")
    raise FileNotFoundError(
        f"{path} has neither config.json (model folder) nor unet/config.json (pipeline folder)."
    )


def _load_from_hub(repo_id: str) -> LoadedConfig:
    from diffusers import UNet2DModel

    errors = []
    for subfolder in UNET_SUBFOLDERS:
        try:
            with warnings.catch_warnings():  # diffusers passes a deprecated hf_hub_download argument
                warnings.simplefilter("ignore", UserWarning)
                config = UNet2DModel.load_config(repo_id, subfolder=subfolder)
        except (OSError, ValueError) as error:
            errors.append(error)
            continue
        where = f"{repo_id}/{subfolder}" if subfolder else repo_id
        return LoadedConfig(config, f"the Hub ({where})")
    shipped = SHIPPED_UNET_CONFIGS.get(repo_id)
    if shipped is not None and shipped.is_file():
        loaded = _load_local(shipped)
        loaded.source = (
            f"the copy of {repo_id}'s config shipped with redistill-diffusion (the Hub was not reachable)"
        )
        return loaded
    first = str(errors[0]).splitlines()[0] if errors else "unknown error"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        first += "; HF_HUB_OFFLINE is set"
    raise FileNotFoundError(
        f"{repo_id!r} is not a local path and its config could not be loaded from the Hub ({first}). "
        f"Pass a config JSON, a model folder or a pipeline folder, or one of the shipped ids: "
        f"{', '.join(SHIPPED_UNET_CONFIGS)} (or shipped names: {', '.join(shipped_names())})."
    )


def load_unet_config(spec: str | os.PathLike) -> LoadedConfig:
    """The teacher UNet2DModel config named by ``spec``: a config JSON, a model or pipeline folder, a shipped
    name (``tiny-ddpm-32``) or a Hub id. Raises one clear error for anything else, or for a non-UNet2DModel."""
    spec = str(spec)
    path = Path(spec).expanduser()
    shipped_dir = CONFIG_DIR / spec
    if path.exists():
        loaded = _load_local(path)
    elif "/" not in spec and (shipped_dir / "unet" / "config.json").is_file():  # a shipped name beats the Hub
        loaded = _load_local(shipped_dir)
        loaded.source = f"the {spec} config shipped with redistill-diffusion"
    elif not is_hub_id(spec):
        raise FileNotFoundError(
            f"No such file or folder: {spec} (and it is not a Hub id of the form owner/name, nor a shipped "
            f"config: {', '.join(shipped_names())})."
        )
    else:
        loaded = _load_from_hub(spec)
    class_name = loaded.config.get("_class_name")
    if class_name not in TEACHER_UNET_CLASSES or "down_block_types" not in loaded.config:
        hint = (
            " It is a ReDistill student; pass its teacher's config."
            if class_name == "ReDistillUNet2DModel"
            else ""
        )
        raise ValueError(
            f"{spec} is not a UNet2DModel config (_class_name={class_name!r}); pass the teacher UNet's config.json, "
            f"its folder or its pipeline folder.{hint}"
        )
    return loaded


def load_scheduler_config(spec: str | os.PathLike) -> dict[str, Any] | None:
    """The scheduler config that goes with the UNet config ``spec`` (a pipeline folder's ``scheduler/``, or the
    shipped copy of a shipped name or Hub id), or None when there is none: the caller then uses its defaults."""
    spec = str(spec)
    candidates = [Path(spec).expanduser() / "scheduler" / "scheduler_config.json"]
    if "/" not in spec:
        candidates.append(CONFIG_DIR / spec / "scheduler" / "scheduler_config.json")
    if spec in SHIPPED_HUB_IDS:
        candidates.append(CONFIG_DIR / SHIPPED_HUB_IDS[spec] / "scheduler" / "scheduler_config.json")
    for candidate in candidates:
        if candidate.is_file():
            with open(candidate, encoding="utf-8") as handle:
                return {k: v for k, v in json.load(handle).items() if not k.startswith("_")}
    return None


__all__ = [
    "CONFIG_DIR",
    "SHIPPED_HUB_IDS",
    "SHIPPED_UNET_CONFIGS",
    "LoadedConfig",
    "load_scheduler_config",
    "load_unet_config",
    "shipped_names",
]
