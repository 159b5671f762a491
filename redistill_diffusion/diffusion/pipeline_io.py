"""DDPM pipeline folders in and out: load a teacher (folder or Hub id), save a student the way diffusers does.

A trained student is saved exactly as diffusers saves a DDPM: a ``DDPMPipeline`` folder
(``model_index.json``, ``unet/`` with safetensors, ``scheduler/``), plus the student's code as a
community component (`diffusion.component_file`): ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`` loads it anywhere, and without ``trust_remote_code`` in a process that
imported ``redistill_diffusion``. Its model card is written by `model_cards.write_model_card`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..hub import UNET_SUBFOLDERS, is_hub_id, local_unet_folder


def _unet_class(class_name: str | None):
    from diffusers import UNet2DModel

    if class_name in (None, "UNet2DModel"):
        return UNet2DModel
    if class_name == "ReDistillUNet2DModel":
        from .model import ReDistillUNet2DModel

        return ReDistillUNet2DModel
    raise ValueError(
        f"The teacher is a {class_name}; ReDistill derives students from diffusers UNet2DModel teachers "
        "(DDPM pipelines). Pass a DDPM pipeline or a UNet2DModel folder."
    )


def _load_local_teacher(name_or_path: str):
    from diffusers import DDPMScheduler

    from ..files import read_json

    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"Teacher {name_or_path!r} not found; pass a DDPM pipeline folder (model_index.json) or a UNet folder "
            "(config.json), or train one with examples/train_ddpm_teacher.py."
        )
    unet_dir = local_unet_folder(path)  # a pipeline's unet/, else the UNet folder itself
    if unet_dir is None:
        if (path / "model_index.json").is_file():
            raise FileNotFoundError(f"Teacher pipeline {name_or_path!r} has no unet/config.json.")
        raise FileNotFoundError(
            f"Teacher folder {name_or_path!r} has neither model_index.json (a pipeline) nor config.json (a UNet)."
        )
    cls = _unet_class(read_json(unet_dir / "config.json").get("_class_name"))  # a broken file is named
    try:
        unet = cls.from_pretrained(str(unet_dir))
    except OSError as error:
        raise FileNotFoundError(
            f"Teacher {name_or_path!r}: could not load its UNet weights ({error})."
        ) from error
    scheduler_dir = path / "scheduler" if unet_dir != path else None
    scheduler = (
        DDPMScheduler.from_pretrained(str(scheduler_dir))
        if scheduler_dir and scheduler_dir.is_dir()
        else None
    )
    return unet, scheduler


def load_teacher(name_or_path: str, cache_dir: str | None = None, revision: str | None = None):
    """Load a frozen-to-be teacher UNet and the noise scheduler that came with it (or None).

    Accepts a DDPM pipeline folder or Hub id (``unet/`` + ``scheduler/``), a UNet folder
    (``config.json`` + weights) or a Hub model id of either (`hub.is_hub_id`). Raises one clear error
    otherwise.
    """
    if not name_or_path:
        raise ValueError(
            "No teacher given: pass --teacher_model_name_or_path (a DDPM pipeline or UNet2DModel folder/Hub id)."
        )
    if not is_hub_id(name_or_path):  # an existing path, or anything written like one
        return _load_local_teacher(name_or_path)

    # A Hub id: a pipeline repo (unet/ subfolder) or a bare UNet repo, in UNET_SUBFOLDERS' order.
    from diffusers import DDPMScheduler, UNet2DModel

    errors = []
    for subfolder in UNET_SUBFOLDERS:
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


def save_ddpm_pipeline(unet, scheduler, output_dir: str | os.PathLike):
    """Save ``unet`` + ``scheduler`` as a DDPMPipeline folder (safetensors) and return the pipeline.

    A student's folder also gets its component file (`diffusion.component_file`: `diffusion/model.py`
    as it is), so it loads with ``trust_remote_code=True`` where this package is not installed.
    """
    from diffusers import DDPMPipeline

    from .component_file import make_pipeline_self_contained

    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.save_pretrained(str(output_dir), safe_serialization=True)
    make_pipeline_self_contained(output_dir)
    return pipeline


__all__ = ["load_teacher", "save_ddpm_pipeline"]
