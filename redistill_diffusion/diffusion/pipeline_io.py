"""DDPM pipeline folders in and out: the library's one pipeline loader (`load_pipeline`), a teacher's UNet
(`load_teacher`), a student saved the way diffusers saves a DDPM (`save_ddpm_pipeline`).

A trained student is saved exactly as diffusers saves a DDPM: a ``DDPMPipeline`` folder
(``model_index.json``, ``unet/`` with safetensors, ``scheduler/``), plus the student's code as a
community component (`diffusion.component_file`), so that outside this package
``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads it. Inside the package every
pipeline is loaded by `load_pipeline`, which builds it from ``model_index.json`` itself (the student with
the package's own class), so no folder code ever runs and diffusers is not patched. Its model card is
written by `diffusion.card.write_model_card`.
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def check_pipeline_source(source: str | os.PathLike) -> None:
    """Fail early, in one line, on a local folder that is not a pipeline with a unet."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"pipeline {source} is a file; expected a pipeline folder or a Hub id")
        if not (path / "unet").is_dir():
            raise ValueError(
                f"pipeline folder {source} has no unet/ subfolder (expected a saved DDPMPipeline)"
            )
        if not (path / "model_index.json").is_file():
            raise ValueError(
                f"pipeline folder {source} has no model_index.json (save it with pipeline.save_pretrained)"
            )
    elif not is_hub_id(source):
        raise FileNotFoundError(f"pipeline folder {source} does not exist")


def _model_index(source: str, cache_dir: str | None, revision: str | None) -> dict:
    from ..files import read_json

    path = Path(source).expanduser()
    if path.is_dir():
        return read_json(path / "model_index.json")
    from huggingface_hub import hf_hub_download

    return read_json(hf_hub_download(source, "model_index.json", cache_dir=cache_dir, revision=revision))


def _component_class(name: str, library: str | None, class_name: str | None):
    """The class of one ``model_index.json`` entry: the package's student under any module name it was
    saved with (``redistill_unet``, ``redistill_diffusion``, ``redistill_diffusion.models.unet_student``,
    ...), else a diffusers or transformers class; never a folder's own code."""
    from .component_file import COMPONENT_CLASS
    from .model import ReDistillUNet2DModel

    if class_name == COMPONENT_CLASS:
        return ReDistillUNet2DModel
    cls = None
    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name or "", None)
    elif library == "transformers":
        import transformers

        cls = getattr(transformers, class_name or "", None)
    if cls is not None:
        return cls
    raise ValueError(
        f"component {name!r} is {library}.{class_name}, which this library does not load; load the pipeline "
        "with DiffusionPipeline.from_pretrained(..., trust_remote_code=True) if you trust its code"
    )


def _build_pipeline(source: str, cache_dir: str | None, revision: str | None):
    import diffusers

    index = _model_index(source, cache_dir, revision)
    pipeline_class = getattr(diffusers, str(index.get("_class_name")), None)
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, diffusers.DiffusionPipeline)):
        raise ValueError(f"model_index.json names {index.get('_class_name')!r}, not a diffusers pipeline")
    components = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
            continue
        library, class_name = entry
        if library is None and class_name is None:  # an optional component saved as absent
            components[name] = None
            continue
        cls = _component_class(name, library, class_name)
        options = (
            {"cache_dir": cache_dir, "revision": revision} if not Path(source).expanduser().is_dir() else {}
        )
        components[name] = cls.from_pretrained(source, subfolder=name, **options)
    pipeline = pipeline_class(**components)
    pipeline.register_to_config(_name_or_path=source)
    return pipeline


def load_pipeline(source: str | os.PathLike, *, cache_dir: str | None = None, revision: str | None = None):
    """The library's one pipeline loader: a saved DDPM pipeline (local folder or Hub id) -> its pipeline.

    It reads ``model_index.json`` and builds the pipeline from its components: a ReDistill student with the
    package's `ReDistillUNet2DModel` (whatever module name the folder was saved with, so folders of earlier
    versions load too), the scheduler and other components with their diffusers classes. No folder code
    runs and ``trust_remote_code`` is not needed. Outside this package, load the same folder with
    ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``. Bad input is one ValueError line.
    """
    from diffusers import DiffusionPipeline

    if isinstance(source, DiffusionPipeline):
        pipeline = source
    else:
        check_pipeline_source(source)
        try:
            pipeline = _build_pipeline(str(source), cache_dir, revision)
        except Exception as error:
            raise ValueError(f"pipeline {source} could not be loaded: {_first_line(error)}") from error
    if getattr(pipeline, "unet", None) is None or getattr(pipeline, "scheduler", None) is None:
        raise ValueError(
            f"pipeline {source} has no unet and scheduler; expected an unconditional image pipeline"
        )
    from .configs import check_unconditional

    check_unconditional(
        pipeline.unet.config,
        f"pipeline {source if isinstance(source, (str, os.PathLike)) else type(source).__name__}",
    )
    return pipeline


__all__ = ["check_pipeline_source", "load_pipeline", "load_teacher", "save_ddpm_pipeline"]
