"""The component file saved with every student is the package's own code and nothing else."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import sys

import pytest
import torch

from redistill_diffusion.models.remote_code import (
    SOURCE_MODULES,
    _strip_module,
    component_source,
    make_pipeline_self_contained,
)


def _imported_roots(source: str) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import left in the component file: line {node.lineno}"
            roots.add(node.module.split(".")[0])
    return roots


def test_component_file_imports_only_torch_diffusers_and_the_standard_library():
    roots = _imported_roots(component_source())
    assert {"torch", "diffusers"} <= roots
    assert all(r in ("torch", "diffusers") or r in sys.stdlib_module_names for r in roots), roots


def test_component_file_holds_every_definition_of_the_package_modules_verbatim():
    """Generated, not copied: any change to the RED block or the student (a new argument or config
    key) is in the next saved file, so the two cannot drift."""
    source = component_source()
    for name in SOURCE_MODULES:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == name:
                assert inspect.getsource(obj) in source, f"{name}.{attr} missing from the component file"
    namespace: dict = {"__name__": "redistill_unet_check"}
    exec(compile(source, "redistill_unet.py", "exec"), namespace)  # noqa: S102 - our own generated code
    student = namespace["ReDistillUNet2DModel"]
    from redistill_diffusion import ReDistillUNet2DModel

    assert inspect.signature(student.__init__) == inspect.signature(ReDistillUNet2DModel.__init__)
    assert (
        inspect.signature(namespace["REDBlock"].__init__).parameters.keys()
        == inspect.signature(
            importlib.import_module("redistill_diffusion.red").REDBlock.__init__
        ).parameters.keys()
    )


def test_generation_refuses_code_the_component_file_could_not_run():
    with pytest.raises(ValueError, match="only torch and diffusers"):
        _strip_module("import numpy\n", "m")
    with pytest.raises(ValueError, match="inside a function"):
        _strip_module("def f():\n    from .red import REDBlock\n", "m")
    body, defined = _strip_module(
        '"""doc"""\nfrom __future__ import annotations\nfrom .red import x\nA = 1\n', "m"
    )
    assert body == "A = 1\n" and defined == {"A"}


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
    from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.models.pipeline_folder import save_ddpm_pipeline

    save_ddpm_pipeline(_tiny_student(), DDPMScheduler(num_train_timesteps=10), tmp_path / "new")
    diffusers_logging.enable_propagation()
    diffusers_logging.set_verbosity_warning()
    try:
        with caplog.at_level("WARNING"):
            unet = ReDistillUNet2DModel.from_pretrained(str(tmp_path / "new" / "unet"))
    finally:
        diffusers_logging.disable_propagation()
        diffusers_logging.set_verbosity_error()
    assert "auto_map" not in caplog.text and "auto_map" not in unet.config
    # A folder saved before component files existed names the package module; it still loads.
    DDPMPipeline(unet=_tiny_student(), scheduler=DDPMScheduler(num_train_timesteps=10)).save_pretrained(
        str(tmp_path / "old")
    )
    assert json.loads((tmp_path / "old" / "model_index.json").read_text())["unet"][0].startswith(
        "redistill_diffusion"
    )
    assert isinstance(DiffusionPipeline.from_pretrained(str(tmp_path / "old")).unet, ReDistillUNet2DModel)
    # ... and can be made self-contained afterwards; a teacher pipeline is left alone.
    assert make_pipeline_self_contained(tmp_path / "old") == ["unet"]
    assert (tmp_path / "old" / "unet" / "redistill_unet.py").is_file()
    pipeline = DiffusionPipeline.from_pretrained(str(tmp_path / "old"))
    assert isinstance(pipeline.unet, ReDistillUNet2DModel)
    out = pipeline.unet(torch.zeros(1, 3, 16, 16), 0).sample
    assert out.shape == (1, 3, 16, 16)
