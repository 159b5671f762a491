"""Make saved students load without this package: the student's file as a diffusers community component.

diffusers loads a pipeline component named ``["<module>", "<Class>"]`` in ``model_index.json`` from
``<component>/<module>.py`` when the caller passes ``trust_remote_code=True``, and ``AutoModel`` loads a
model folder whose ``config.json`` has ``auto_map``. The file written here is `diffusion.model`,
copied as it is: it imports only torch and diffusers, and it is the package's own definition of the
student, so the saved code cannot drift from the package's.

The package itself never runs that file: its loads go through `diffusion.pipeline_io.load_pipeline`, which
builds the pipeline from ``model_index.json`` with the package's own class (diffusers is not patched).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import model as student_file

COMPONENT_MODULE = "redistill_unet"
COMPONENT_CLASS = "ReDistillUNet2DModel"


def component_source() -> str:
    """The text of ``<component>/redistill_unet.py``: the package's `diffusion/model.py`, verbatim."""
    return Path(student_file.__file__).read_text(encoding="utf-8")


def write_component(unet_dir: str | os.PathLike, source: str | None = None) -> Path:
    """Write the component file into a saved student's folder and point ``auto_map`` (AutoModel) at it."""
    unet_dir = Path(unet_dir)
    path = unet_dir / f"{COMPONENT_MODULE}.py"
    path.write_text(source if source is not None else component_source(), encoding="utf-8")
    config_path = unet_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModel": f"{COMPONENT_MODULE}.{COMPONENT_CLASS}"}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def make_pipeline_self_contained(pipeline_dir: str | os.PathLike) -> list[str]:
    """Give every student component of a saved pipeline its component file; returns their names.

    ``model_index.json`` then names ``["redistill_unet", "ReDistillUNet2DModel"]`` for them, which
    diffusers resolves to the file (``trust_remote_code=True``) and `pipeline_io.load_pipeline` to the
    package's class. A folder saved by an earlier version gets the current file.
    """
    pipeline_dir = Path(pipeline_dir)
    index_path = pipeline_dir / "model_index.json"
    index = json.loads(index_path.read_text(encoding="utf-8"))
    students = [
        key
        for key, value in index.items()
        if isinstance(value, list) and len(value) == 2 and value[1] == COMPONENT_CLASS
    ]
    if not students:
        return []
    source = component_source()
    for key in students:
        write_component(pipeline_dir / key, source)
        index[key] = [COMPONENT_MODULE, COMPONENT_CLASS]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return students
