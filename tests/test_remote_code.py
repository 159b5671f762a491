"""The component file saved with every student is the package's student file, as it is; folders saved by
earlier versions (with the file generated from three modules) keep loading."""

from __future__ import annotations

import ast
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from redistill_diffusion.diffusion import model as unet_student
from redistill_diffusion.diffusion.component_file import component_source, make_pipeline_self_contained

LEGACY = Path(__file__).parent / "fixtures" / "student_pipeline_2176d4f"


def _imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import in the student file: line {node.lineno}"
            roots.add(node.module.split(".")[0])
    return roots


def test_component_file_is_the_student_module_verbatim_and_imports_only_torch_and_diffusers():
    source = component_source()
    assert source == Path(unet_student.__file__).read_text(encoding="utf-8")
    roots = _imported_roots(source)
    assert {"torch", "diffusers"} <= roots
    assert all(r in ("torch", "diffusers") or r in sys.stdlib_module_names for r in roots), roots
    # It runs on its own and defines the student the package uses (the same class, by its source).
    namespace: dict = {"__name__": "redistill_unet_check"}
    exec(compile(source, "redistill_unet.py", "exec"), namespace)  # noqa: S102 - the package's own file
    from redistill_diffusion import REDBlock, ReDistillUNet2DModel

    assert ReDistillUNet2DModel is unet_student.ReDistillUNet2DModel and REDBlock is unet_student.REDBlock
    assert inspect.signature(namespace["ReDistillUNet2DModel"].__init__) == inspect.signature(
        ReDistillUNet2DModel.__init__
    )


def _tiny_student():
    from redistill_diffusion import ReDistillUNet2DModel

    return ReDistillUNet2DModel(
        sample_size=16,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        attention_head_dim=None,
        red_placement=[{"tap": "conv_in:output", "channels": 8}],
    )


def test_saved_student_loads_quietly_and_folders_of_earlier_versions_still_load(tmp_path, caplog):
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.utils import logging as diffusers_logging

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline, save_ddpm_pipeline

    save_ddpm_pipeline(_tiny_student(), DDPMScheduler(num_train_timesteps=10), tmp_path / "new")
    diffusers_logging.enable_propagation()
    diffusers_logging.set_verbosity_warning()
    try:
        with caplog.at_level("WARNING"):
            unet = ReDistillUNet2DModel.from_pretrained(str(tmp_path / "new" / "unet"))
            pipeline = load_pipeline(tmp_path / "new")
    finally:
        diffusers_logging.disable_propagation()
        diffusers_logging.set_verbosity_error()
    assert "auto_map" not in caplog.text and "auto_map" not in unet.config
    assert type(pipeline.unet) is ReDistillUNet2DModel and isinstance(pipeline.scheduler, DDPMScheduler)
    # Folders saved before component files existed name a package module; they still load, under every
    # module name an earlier version wrote (the saved format never names the new diffusion/ path).
    DDPMPipeline(unet=_tiny_student(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(
        str(tmp_path / "old")
    )
    index_path = tmp_path / "old" / "model_index.json"
    index = json.loads(index_path.read_text())
    assert index["unet"] == ["redistill_diffusion.diffusion.model", "ReDistillUNet2DModel"]
    for module in ("redistill_diffusion.models.unet_student", "redistill_diffusion"):
        index_path.write_text(json.dumps({**index, "unet": [module, "ReDistillUNet2DModel"]}))
        assert type(load_pipeline(tmp_path / "old").unet) is ReDistillUNet2DModel, module
    # ... and can be made self-contained afterwards; a teacher pipeline is left alone.
    assert make_pipeline_self_contained(tmp_path / "old") == ["unet"]
    assert (tmp_path / "old" / "unet" / "redistill_unet.py").read_text() == component_source()
    pipeline = load_pipeline(tmp_path / "old")
    assert isinstance(pipeline.unet, ReDistillUNet2DModel)
    out = pipeline.unet(torch.zeros(1, 3, 16, 16), 0).sample
    assert out.shape == (1, 3, 16, 16)


def test_importing_the_package_patches_nothing_of_diffusers():
    """`import redistill_diffusion` leaves `diffusers.pipelines` as it found it (issue 25: no patching). Both
    sides import the diffusers pipeline classes the package samples with, whose own submodules diffusers adds."""
    probe = (
        "import sys, diffusers.pipelines\n"
        "from diffusers import DDIMPipeline, DDPMPipeline, DiffusionPipeline  # noqa: F401\n"
        "if sys.argv[1] == 'with':\n"
        "    import redistill_diffusion, redistill_diffusion.diffusion.pipeline_io  # noqa: F401\n"
        "print('\\n'.join(sorted(dir(diffusers.pipelines))))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    names = {}
    for case in ("without", "with"):
        result = subprocess.run(
            [sys.executable, "-c", probe, case], env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-2000:]
        names[case] = set(result.stdout.split())
    assert "DDPMPipeline" in names["without"]
    assert names["with"] - names["without"] == set(), names["with"] - names["without"]


def test_a_package_module_named_by_a_folder_is_never_loaded_from_the_folder(tmp_path):
    """The library loader takes the student class from the package even where the folder carries a
    different file of the component's name: no folder code runs."""
    from diffusers import DDPMScheduler

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline, save_ddpm_pipeline

    save_ddpm_pipeline(_tiny_student(), DDPMScheduler(num_train_timesteps=10), tmp_path / "p")
    (tmp_path / "p" / "unet" / "redistill_unet.py").write_text("raise SystemExit('folder code ran')\n")
    assert type(load_pipeline(tmp_path / "p").unet) is ReDistillUNet2DModel


# In a fresh interpreter where `import redistill_diffusion` fails: each folder loads through its own
# component file (trust_remote_code) and reproduces the output recorded when it was saved.
LOAD_WITHOUT_PACKAGE = """
import sys
sys.modules["redistill_diffusion"] = None
import torch
from diffusers import AutoModel, DiffusionPipeline
from safetensors.torch import load_file
expected = load_file(sys.argv[1])
for folder in sys.argv[2:]:
    pipeline = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    unet = AutoModel.from_pretrained(folder + "/unet", trust_remote_code=True)
    for model in (pipeline.unet, unet):
        assert type(model).__name__ == "ReDistillUNet2DModel", type(model)
        assert not type(model).__module__.startswith("redistill_diffusion")
        with torch.no_grad():
            y = model.eval()(expected["x"], expected["t"]).sample
        print(folder, float((y - expected["y"]).abs().max()))
"""


def test_a_folder_saved_by_the_generated_component_file_version_still_loads(tmp_path):
    """The fixture was saved at 2176d4f: model_index names ["redistill_unet", ...], unet/config.json has
    `auto_map`, and unet/redistill_unet.py is the file generated from taps, red and unet_student."""
    from safetensors.torch import load_file

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.diffusion.pipeline_io import load_pipeline, load_teacher

    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder, ignore=shutil.ignore_patterns("README.md"))
    (folder / "unet" / "redistill_unet.py.txt").rename(folder / "unet" / "redistill_unet.py")
    legacy_file = (folder / "unet" / "redistill_unet.py").read_text()
    assert "# ---- from redistill_diffusion.red ----" in legacy_file and legacy_file != component_source()
    assert json.loads((folder / "model_index.json").read_text())["unet"] == [
        "redistill_unet",
        "ReDistillUNet2DModel",
    ]
    config = json.loads((folder / "unet" / "config.json").read_text())
    assert config["_class_name"] == "ReDistillUNet2DModel"
    assert config["auto_map"] == {"AutoModel": "redistill_unet.ReDistillUNet2DModel"}
    expected = load_file(str(folder / "expected_output.safetensors"))

    # With the package: the package's class, the same output, through every loading path.
    unets = [
        load_pipeline(folder).unet,
        ReDistillUNet2DModel.from_pretrained(str(folder / "unet")),
        load_teacher(str(folder))[0],
    ]
    for unet in unets:
        assert type(unet) is ReDistillUNet2DModel and len(unet.red_blocks) == 2
        with torch.no_grad():
            torch.testing.assert_close(unet.eval()(expected["x"], expected["t"]).sample, expected["y"])

    # Without the package: the folder's own (generated) file, and, once upgraded, the current one.
    upgraded = tmp_path / "upgraded"
    shutil.copytree(folder, upgraded)
    assert make_pipeline_self_contained(upgraded) == ["unet"]
    assert (upgraded / "unet" / "redistill_unet.py").read_text() == component_source()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    argv = [sys.executable, "-c", LOAD_WITHOUT_PACKAGE, str(folder / "expected_output.safetensors")]
    result = subprocess.run(
        argv + [str(folder), str(upgraded)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = [float(line.split()[-1]) for line in result.stdout.splitlines()]
    assert len(errors) == 4 and max(errors) < 1e-5, result.stdout


def test_the_old_import_paths_still_work():
    """`redistill_diffusion.models.*` re-export `redistill_diffusion.diffusion`; all but the student file (which
    saved folders name) say where the code moved."""
    import importlib

    import pytest

    from redistill_diffusion.diffusion import component_file, model, pipeline_io

    old_student = importlib.import_module("redistill_diffusion.models.unet_student")
    assert old_student.ReDistillUNet2DModel is model.ReDistillUNet2DModel
    assert old_student.REDBlock is model.REDBlock
    moved = {
        "pipeline_folder": (pipeline_io, ("load_teacher", "save_ddpm_pipeline", "load_pipeline")),
        "remote_code": (component_file, ("component_source", "make_pipeline_self_contained")),
    }
    for old, (new, names) in moved.items():
        sys.modules.pop(f"redistill_diffusion.models.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"models.{old} moved"):
            module = importlib.import_module(f"redistill_diffusion.models.{old}")
        assert all(getattr(module, name) is getattr(new, name) for name in names), old
