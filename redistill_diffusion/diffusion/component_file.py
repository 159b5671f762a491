"""Make saved students load without this package: the student's file as a diffusers community component.

diffusers loads a pipeline component named ``["<module>", "<Class>"]`` in ``model_index.json`` from
``<component>/<module>.py`` when the caller passes ``trust_remote_code=True``, and ``AutoModel`` loads a
model folder whose ``config.json`` has ``auto_map``. The file written here is `diffusion.model`,
copied as it is: it imports only torch and diffusers, and it is the package's own definition of the
student, so the saved code cannot drift from the package's.

A process that has imported this package loads the same folders with the package's class and without
``trust_remote_code``: `register_with_diffusers` makes the component's module name resolve as a diffusers
pipeline module (diffusers checks those before it looks for a component file). diffusers has no other
way to resolve a component name to an imported class while the folder carries a file of that name; the
library's own loads (`redistill eval`, the quickstart comparison) rely on it so that they never run a
folder's code.
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
    diffusers resolves to the file (``trust_remote_code=True``) or, in a process that imported this
    package, to the package's class. A folder saved by an earlier version gets the current file.
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


def register_with_diffusers() -> None:
    """Let ``["redistill_unet", ...]`` resolve to this package's class in a process that imported it.

    What is registered is `diffusion.model`, the module whose file every saved student carries, so
    the class found is the one the folder's own code defines, without running that code.
    """
    import diffusers.pipelines

    setattr(diffusers.pipelines, COMPONENT_MODULE, student_file)
