"""`redistill export` and the runtime memory figures (issue 26), on tiny models.

ONNX tests need onnx + onnxscript + onnxruntime, ExecuTorch tests need executorch (the `[deploy]` extra);
each skips cleanly without its package. Bad input needs neither.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_training import TINY_UNET

from redistill_diffusion.cli import main as cli_main
from redistill_diffusion.deploy import extras
from redistill_diffusion.deploy.sources import load_deployable, spread_timesteps

needs_onnx = pytest.mark.skipif(
    not extras.available("onnx"), reason="onnx/onnxscript/onnxruntime not installed"
)
needs_executorch = pytest.mark.skipif(not extras.available("executorch"), reason="executorch not installed")


@pytest.fixture(scope="module")
def student_pipeline(tmp_path_factory) -> Path:
    """A tiny stem-stride-2 student (RED blocks, teacher init, teacher head, the sub-pixel and input skips with
    non-zero gains, so the exported graph must carry their per-sample matrices) saved as a DDPM pipeline with a
    card."""
    from diffusers import DDPMScheduler, UNet2DModel

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.diffusion.pipeline_io import save_ddpm_pipeline

    torch.manual_seed(0)
    teacher = UNet2DModel(**TINY_UNET)
    student = ReDistillUNet2DModel.from_teacher(
        teacher,
        stem_stride=2,
        init="teacher",
        head_init="teacher",
        red_preset="paper",
        subpixel_skip=True,
        input_skip=True,
    )
    with torch.no_grad():
        for path in (student.subpixel_path, student.input_path):
            torch.nn.init.normal_(path.gain.weight, std=0.05)
            torch.nn.init.normal_(path.gain.bias, std=0.05)
    folder = tmp_path_factory.mktemp("deploy") / "student"
    save_ddpm_pipeline(student.eval(), DDPMScheduler(num_train_timesteps=1000), folder)
    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# tiny student\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory) -> Path:
    from redistill_diffusion.classification import create_student, create_teacher, save_classifier

    torch.manual_seed(0)
    teacher = create_teacher(
        "resnet18", num_classes=10, cifar_stem=True, channels=(8, 16, 16, 32), stem_type="deep", stem_width=4
    )
    student = create_student(teacher, stem_stride=4)
    folder = tmp_path_factory.mktemp("deploy") / "classifier"
    save_classifier(student.eval(), folder, data_config={"input_size": (3, 32, 32)})
    return folder


def test_timesteps_spread_over_the_schedule():
    assert spread_timesteps(4).tolist() == [0, 333, 666, 999]
    assert spread_timesteps(1).tolist() == [500]


def test_folders_are_recognised(student_pipeline, classifier_folder):
    denoiser = load_deployable(student_pipeline)
    assert denoiser.kind == "denoiser" and denoiser.input_names == ["sample", "timestep"]
    assert denoiser.scheduler is not None
    sample, timesteps = denoiser.example_inputs(3)
    assert sample.shape == (3, 3, 16, 16) and timesteps.tolist() == [0, 500, 999]
    classifier = load_deployable(classifier_folder)
    assert classifier.kind == "classifier"
    assert classifier.example_inputs(2)[0].shape == (2, 3, 32, 32)


def _export_error(argv, capsys) -> str:
    assert cli_main(["export", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_folders_are_one_line_and_write_nothing(tmp_path, capsys):
    not_a_model = tmp_path / "photos"
    not_a_model.mkdir()
    (not_a_model / "cat.png").write_bytes(b"")
    assert "has neither model_index.json nor config.json" in _export_error([str(not_a_model)], capsys)
    assert "is not a folder" in _export_error([str(tmp_path / "missing")], capsys)
    other = tmp_path / "vae"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    assert "describes a AutoencoderKL" in _export_error([str(other)], capsys)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cat.png", "config.json", "photos", "vae"]


def test_missing_extra_is_one_line(student_pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)  # as if nothing were installed
    err = _export_error(
        [str(student_pipeline), "--format", "onnx", "--output_dir", str(tmp_path / "out")], capsys
    )
    assert "pip install 'redistill-diffusion[deploy]'" in err and "'onnx'" in err
    assert not (tmp_path / "out").exists()


def test_unsupported_operator_is_one_line_and_leaves_nothing(tmp_path):
    pytest.importorskip("onnxscript")
    from torch import nn

    from redistill_diffusion.deploy.export import export_file
    from redistill_diffusion.deploy.sources import classifier_deployable

    class DataDependent(nn.Module):  # a Python branch on a tensor value: no graph can hold it
        def forward(self, x):
            return x * 2 if x.sum().item() > 0 else x - 1

    deployable = classifier_deployable(DataDependent(), (3, 4, 4), "data-dependent model")
    with pytest.raises(ValueError, match="could not export data-dependent model to ONNX") as raised:
        export_file(deployable, "onnx", tmp_path)
    assert "\n" not in str(raised.value).strip() or len(str(raised.value)) < 2000
    assert list(tmp_path.iterdir()) == []


def test_existing_files_are_not_replaced_without_overwrite(student_pipeline, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"mine")
    err = _export_error([str(student_pipeline), "--format", "onnx", "--output_dir", str(out)], capsys)
    assert "--overwrite" in err
    assert (out / "model.onnx").read_bytes() == b"mine"


@needs_onnx
def test_onnx_export_matches_eager_and_samples_alike(student_pipeline, tmp_path, capsys):
    out = tmp_path / "onnx"
    argv = ["export", str(student_pipeline), "--format", "onnx", "--output_dir", str(out), "--update_card"]
    assert cli_main(argv) == 0
    report = json.loads((out / "export_report.json").read_text())
    (entry,) = report["files"]
    assert entry["runtime"] == "onnxruntime" and entry["batch_sizes"] == [1, 4]
    assert (
        0 < entry["max_abs_reference"] and entry["max_abs_error"] <= 1e-4 + 1e-4 * entry["max_abs_reference"]
    )
    assert {c["sampler"] for c in entry["sampling"]} == {"ddim", "ddpm"}
    assert all(c["max_uint8_difference"] <= 1 and c["max_abs_difference"] < 1e-3 for c in entry["sampling"])
    # the file itself, run again in onnxruntime at a batch it was not checked at
    from redistill_diffusion.deploy.runtimes import EagerRunner, OnnxRunner

    deployable = load_deployable(student_pipeline)
    inputs = deployable.example_inputs(3, seed=5)
    expected = EagerRunner(deployable.module)(*inputs)
    assert torch.allclose(OnnxRunner(out / "model.onnx")(*inputs), expected, atol=1e-4, rtol=1e-4)
    card = (student_pipeline / "README.md").read_text()
    assert "## Deployment (`redistill export`)" in card and "onnxruntime" in card
    assert card.startswith("---\nlibrary_name: diffusers")
    assert not list(out.glob(".*partial*"))


@needs_onnx
def test_classifier_exports_to_onnx(classifier_folder, tmp_path):
    from redistill_diffusion.deploy import export_model

    report = export_model(classifier_folder, tmp_path / "out", ("onnx",), progress=lambda _: None)
    (entry,) = report["files"]
    assert (
        report["kind"] == "classifier" and entry["max_abs_error"] <= 1e-4 + 1e-4 * entry["max_abs_reference"]
    )
    assert (tmp_path / "out" / "model.onnx").is_file()


@needs_executorch
def test_executorch_export_matches_eager_and_plans_less_for_the_student(student_pipeline, tmp_path):
    from redistill_diffusion.deploy import export_model
    from redistill_diffusion.deploy.export import executorch_program, planned_bytes
    from redistill_diffusion.deploy.sources import denoiser_deployable

    report = export_model(
        student_pipeline,
        tmp_path / "et",
        ("executorch",),
        batch_size=2,
        backend="portable",
        progress=lambda _: None,
    )
    (entry,) = report["files"]
    assert entry["batch_sizes"] == [2] and entry["planned_bytes"] > 0
    assert entry["max_abs_error"] <= 1e-4 + 1e-4 * entry["max_abs_reference"]
    assert all(c["max_uint8_difference"] <= 1 for c in entry["sampling"])
    assert planned_bytes(tmp_path / "et" / "model.pte") == entry["planned_bytes"]
    # the memory plan of the teacher vs its stem-stride-2 student: the 4x the tracer counts
    from diffusers import UNet2DModel

    from redistill_diffusion import ReDistillUNet2DModel
    from redistill_diffusion.memory import measure_peak_memory

    torch.manual_seed(0)
    config = dict(TINY_UNET, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)
    teacher = UNet2DModel(**config).eval()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, init="random").eval()
    planned = [
        planned_bytes(executorch_program(denoiser_deployable(m), 1, "portable")) for m in (teacher, student)
    ]
    traced = [measure_peak_memory(m, (3, 16, 16)).peak_bytes for m in (teacher, student)]
    assert planned[0] / planned[1] >= 0.9 * traced[0] / traced[1]


@needs_executorch
def test_executorch_plan_holds_no_run_time_copy_of_linear_weights():
    """Without constant folding, the portable plan held each nn.Linear weight transposed at run time (1 MiB
    for the CIFAR-10 UNet's time embedding: the stride-4 student's whole peak, docs/deploy.md)."""
    from torch import nn

    from redistill_diffusion.deploy.export import executorch_program, planned_bytes
    from redistill_diffusion.deploy.sources import classifier_deployable

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 256), nn.SiLU(), nn.Linear(256, 10)).eval()
    deployable = classifier_deployable(model, (16, 4, 4), "linear model")
    weight_bytes = 256 * 256 * 4
    planned = planned_bytes(executorch_program(deployable, 1, "portable"))
    assert 0 < planned < weight_bytes // 8  # activations of a few KB, not a 256 KB weight copy


@needs_onnx
def test_memory_runtime_reports_resident_memory_in_fresh_processes(tmp_path, capsys):
    from redistill_diffusion.deploy import probe

    if not probe.supported():
        pytest.skip("needs Linux /proc/self/clear_refs")
    # two resolutions, no attention: each ONNX export of it takes a third of the time of TINY_UNET's
    unet = dict(TINY_UNET, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2)
    unet["up_block_types"] = ("UpBlock2D",) * 2
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"_class_name": "UNet2DModel", **unet}))
    out = tmp_path / "mem.json"
    argv = ["memory", str(config), "--runtime", "onnxruntime", "--runtime_batches", "32"]
    argv += ["--runtime_repeats", "2", "--json", str(out)]
    assert cli_main(argv) == 0
    (row,) = json.loads(out.read_text())["runtimes"]
    assert row["runtime"] == "onnxruntime" and row["batch"] == 32
    assert row["teacher"] > row["student"] > 0 and len(row["teacher_repeats"]) == 2
    assert "peak RSS above loaded" in capsys.readouterr().out


def test_memory_runtime_without_its_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)
    assert cli_main(["memory", "tiny-ddpm-32", "--runtime", "executorch"]) == 2
    err = capsys.readouterr().err
    assert "'executorch'" in err and len(err.strip().splitlines()) == 1


def test_importing_the_package_beside_the_deploy_extra_prints_nothing():
    """ExecuTorch brings torchao, which diffusers imports at start-up; its three import-time warnings would
    precede every one-line error and every run's output."""
    import subprocess
    import sys

    pytest.importorskip("torchao")
    code = "import redistill_diffusion; from diffusers import DDPMPipeline, UNet2DModel"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
