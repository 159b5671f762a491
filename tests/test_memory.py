"""Peak activation memory: exact tracer against hand counts and torch's MemTracker, the paper's DDPM
figures (3.50 MB -> 0.875 MB), the convention registry, and `redistill memory` offline."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from torch import nn

from redistill_diffusion.cli import main
from redistill_diffusion.diffusion.configs import SHIPPED_UNET_CONFIGS, load_unet_config
from redistill_diffusion.diffusion.model import ReDistillUNet2DModel
from redistill_diffusion.memory import (
    LayerMemory,
    MemorySummary,
    compare,
    default_inputs,
    measure_peak_memory,
    register_paper_convention,
    registered_paper_conventions,
    unregister_paper_convention,
)

CIFAR10_CONFIG = SHIPPED_UNET_CONFIGS["google/ddpm-cifar10-32"]
TINY_CONFIG = Path(__file__).parent / "fixtures" / "tiny_unet_config.json"
MB = 1024**2


def tiny_convnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8x8x8 fp32 = 2048 B
        nn.ReLU(),  # a second 2048 B while the conv output is still referenced
        nn.Conv2d(8, 16, 3, stride=2, padding=1),  # 16x4x4 = 1024 B
        nn.ReLU(inplace=True),  # in place: no new storage
        nn.Flatten(),  # a view
        nn.Linear(256, 10),  # 40 B; aten.t of its weight is a view of a parameter
    )


@pytest.fixture(scope="module")
def cifar10_teacher() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel.from_config(UNet2DModel.load_config(CIFAR10_CONFIG)).eval()


# ------------------------------------------------------------------------------------------ exact


def test_exact_count_of_a_hand_countable_convnet():
    report = measure_peak_memory(tiny_convnet(), (3, 8, 8))
    assert report.peak_bytes == 2 * 8 * 8 * 8 * 4
    assert report.peak_layer == "1" and report.peak_op == "aten.relu"
    assert sorted((r.op, r.module, r.shape) for r in report.alive_at_peak) == [
        ("aten.convolution", "0", (1, 8, 8, 8)),
        ("aten.relu", "1", (1, 8, 8, 8)),
    ]
    # Timeline: one entry per leaf layer; after the Linear, the conv2 output (1024 B) and logits (40 B) remain.
    assert [layer.name for layer in report.layers] == ["0", "1", "2", "3", "4", "5"]
    assert report.layers[2].bytes == 2048 + 1024
    assert report.layers[-1].end_bytes == 1024 + 40


def test_exact_count_scales_with_batch_and_excludes_inputs():
    model = tiny_convnet()
    assert measure_peak_memory(model, (3, 8, 8), batch_size=2).peak_bytes == 2 * 4096
    batch = torch.randn(3, 3, 8, 8)
    assert measure_peak_memory(model, inputs=batch).peak_bytes == 3 * 4096


def test_views_of_weights_are_not_activations():
    # aten.t(weight) shares the weight's storage: only the 10 output floats are activations.
    assert measure_peak_memory(nn.Linear(256, 10), inputs=torch.randn(1, 256)).peak_bytes == 40


def test_exact_count_agrees_with_torch_memtracker():
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    model = UNet2DModel.from_config(UNet2DModel.load_config(TINY_CONFIG)).eval()
    args, kwargs = default_inputs(model, (3, 16, 16))
    tracker = mem_tracker.MemTracker()
    tracker.track_external(model, *args)
    with torch.no_grad(), tracker:
        model(*args, **kwargs)
    activation_peak = next(iter(tracker.get_tracker_snapshot("peak").values()))[mem_tracker._MemRefType.ACT]
    assert measure_peak_memory(model, inputs=(*args,)).peak_bytes == activation_peak


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reports_max_memory_allocated():
    report = measure_peak_memory(tiny_convnet().cuda(), (3, 8, 8))
    assert report.peak_bytes == 4096
    assert report.cuda_max_memory_allocated is not None and report.cuda_max_memory_allocated >= 4096


# ------------------------------------------------------------------------------- DDPM CIFAR-10


def test_paper_convention_reproduces_the_published_ddpm_figures(cifar10_teacher):
    student = ReDistillUNet2DModel.from_teacher(cifar10_teacher, stem_stride=2, init="random")
    result = compare(cifar10_teacher, student, (3, 32, 32), convention="paper")
    assert result["teacher"]["peak_bytes"] / MB == pytest.approx(3.50, rel=0.01)
    assert result["student"]["peak_bytes"] / MB == pytest.approx(0.875, rel=0.01)
    assert result["ratio"] >= 3.9
    # The peak is the first full-resolution up ResBlock (concat of upsampled map and skip).
    assert result["teacher"]["peak_layer"] == result["student"]["peak_layer"] == "up_blocks.3.resnets.0"
    assert result["convention"] == "paper" and result["resolution"] == 32


def test_memory_summary_round_trips_and_reads_what_earlier_versions_wrote(caplog):
    """One schema: a measured summary survives JSON; results.json's flat entries, the cards' dictionaries and
    `redistill memory`'s single-convention object of earlier versions read back to the same numbers."""
    teacher, student = tiny_convnet(), nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    measured = MemorySummary.measure(teacher, student, (3, 8, 8))  # no paper convention: left out, warned
    assert list(measured.comparisons) == ["exact"] and "paper convention" in caplog.text
    assert measured["exact"].teacher.peak_bytes == 4096 and measured["exact"].ratio == 4096 / 1024
    saved = json.loads(json.dumps(measured.to_dict(include_layers=True)))
    assert MemorySummary.from_dict(saved).to_dict(include_layers=True) == saved
    assert saved["exact"] == compare(teacher, student, (3, 8, 8))
    with pytest.raises(ValueError, match="paper convention"):
        MemorySummary.measure(teacher, student, (3, 8, 8), conventions=("paper",), strict=True)

    flat = {
        "teacher_mb": 1.0,
        "student_mb": 0.25,
        "ratio": 4.0,
        "teacher_peak_bytes": MB,
        "student_peak_bytes": MB // 4,
    }
    earlier = [
        {"exact": flat},  # results.json's peak_memory
        {"exact": {"teacher_mb": 1.0, "student_mb": 0.25, "ratio": 4.0}},  # quickstart summary, card dicts
        {"convention": "exact", "teacher_peak_bytes": MB, "student_peak_bytes": MB // 4, "all": {"exact": flat}},
        {"convention": "exact", "resolution": 8, "teacher": {"peak_bytes": MB}, "student": {"peak_bytes": MB // 4},
         "ratio": 4.0, "runtimes": []},  # redistill memory --json, one convention
    ]  # fmt: skip
    for data in earlier:
        summary = MemorySummary.from_dict(data)
        assert list(summary.comparisons) == ["exact"], data
        assert (summary["exact"].teacher.peak_bytes, summary["exact"].student.peak_bytes) == (MB, MB // 4)
        assert summary["exact"].describe() == "teacher 1.000 MB -> student 0.250 MB (4.00x)"
    assert not MemorySummary.from_dict({}) and not MemorySummary.from_dict(None)


def test_exact_count_ratio_for_stem_stride_2_and_4(cifar10_teacher):
    teacher = measure_peak_memory(cifar10_teacher, (3, 32, 32))
    ratios = {}
    for stem_stride in (2, 4):
        student = ReDistillUNet2DModel.from_teacher(cifar10_teacher, stem_stride=stem_stride, init="random")
        ratios[stem_stride] = teacher.peak_bytes / measure_peak_memory(student, (3, 32, 32)).peak_bytes
    print(f"exact teacher {teacher.peak_mb:.4f} MB, ratios {ratios}")
    assert ratios[2] >= 3.9
    assert ratios[4] > 8
    # What a real execution holds at the peak is more than the convention admits (see docs/memory.md).
    assert teacher.peak_bytes > 3.5 * MB
    assert any(record.op == "aten.cat" for record in teacher.alive_at_peak)


def test_paper_convention_lists_red_blocks_of_a_student():
    teacher = UNet2DModel.from_config(UNet2DModel.load_config(TINY_CONFIG)).eval()
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=2, init="random", red_preset="paper")
    report = measure_peak_memory(student, (3, 16, 16), convention="paper")
    red_layers = [layer for layer in report.layers if layer.name.startswith("red_blocks.")]
    assert len(red_layers) == len(student.red_blocks) > 0
    assert all(layer.bytes > 0 for layer in red_layers)


# ------------------------------------------------------------------------------------ registry


class _TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(self.a(x))


def test_registered_paper_convention_is_used_and_per_sample():
    def two_convs(model, probe):
        return [LayerMemory(name, probe.conv_bytes(name)) for name in ("a", "b")]

    register_paper_convention(lambda m: isinstance(m, _TwoConvs), two_convs, name="test-two-convs")
    try:
        report = measure_peak_memory(_TwoConvs(), (3, 5, 5), convention="paper", batch_size=4)
        assert report.peak_layer == "a"
        assert report.peak_bytes == (3 + 4) * 25 * 4  # per sample: the batch of 4 is dropped
        assert [layer.bytes for layer in report.layers] == [(3 + 4) * 100, (4 + 2) * 100]
    finally:
        unregister_paper_convention("test-two-convs")
    assert "test-two-convs" not in registered_paper_conventions()


def test_paper_convention_for_an_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="No paper convention is registered for _TwoConvs"):
        measure_peak_memory(_TwoConvs(), (3, 5, 5), convention="paper")
    with pytest.raises(ValueError, match="Unknown convention"):
        measure_peak_memory(_TwoConvs(), (3, 5, 5), convention="theoretical")
    with pytest.raises(ValueError, match="exactly one of input_shape or inputs"):
        measure_peak_memory(_TwoConvs())


# ----------------------------------------------------------------------------------------- CLI


def test_cli_on_a_config_json_offline_writes_json_and_png(tmp_path, capsys):
    out_json, out_png = tmp_path / "memory.json", tmp_path / "plots" / "memory.png"
    code = main(
        ["memory", str(CIFAR10_CONFIG), "--stem_stride", "2", "--convention", "both",
         "--json", str(out_json), "--plot", str(out_png)]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out_json.read_text())
    assert set(results) == {"exact", "paper"}
    for convention, result in results.items():
        assert result["convention"] == convention and result["resolution"] == 32
        assert isinstance(result["teacher"]["peak_bytes"], int) and isinstance(
            result["student"]["peak_layer"], str
        )
        assert result["ratio"] == pytest.approx(
            result["teacher"]["peak_bytes"] / result["student"]["peak_bytes"]
        )
        assert result["ratio"] >= 3.9
    assert results["paper"]["teacher"]["peak_bytes"] / MB == pytest.approx(3.50, rel=0.01)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "3.5005" in printed and "0.8755" in printed


def test_cli_single_convention_json_is_the_comparison_object(tmp_path):
    # A pipeline folder (unet/config.json) and dash spellings of the flags.
    pipeline = tmp_path / "pipeline"
    (pipeline / "unet").mkdir(parents=True)
    shutil.copy(TINY_CONFIG, pipeline / "unet" / "config.json")
    out_json = tmp_path / "tiny.json"
    assert (
        main(["memory", str(pipeline), "--stem-stride", "4", "--batch-size", "2", "--json", str(out_json)])
        == 0
    )
    result = json.loads(out_json.read_text())
    assert set(result) == {"convention", "resolution", "teacher", "student", "ratio"}
    assert result["convention"] == "exact" and result["resolution"] == 16
    assert result["teacher"]["input_shape"] == [2, 3, 16, 16]


def test_shipped_hub_id_falls_back_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_unet_config("google/ddpm-cifar10-32")
    assert loaded.config["block_out_channels"] == [128, 256, 256, 256]
    assert "shipped" in loaded.source


@pytest.mark.parametrize(
    "argv, message",
    [
        (["memory", "missing/config.json"], "No such file or folder"),
        (
            ["memory", str(CIFAR10_CONFIG.parents[1] / "scheduler" / "scheduler_config.json")],
            "not a UNet2DModel config",
        ),
        (["memory", str(CIFAR10_CONFIG), "--stem_stride", "3"], "power of two"),
        (["memory", str(CIFAR10_CONFIG), "--stem_stride", "16"], "downsamplers"),
        (["memory", str(CIFAR10_CONFIG), "--resolution", "20"], "divisible"),
        (["memory"], "exactly one teacher"),
    ],
)
def test_cli_bad_input_is_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------- timm


def test_timm_resnet18_stem_stride_8_exact(capsys):
    from redistill_diffusion.classification.memory_convention import build_timm_pair

    teacher, student = build_timm_pair("resnet18", stem_stride=8, num_classes=10)
    result = compare(teacher, student, (3, 224, 224))
    # conv1 output + its batch-norm copy at 112x112 vs the student's stem at 28x28.
    assert result["teacher"]["peak_bytes"] == 2 * 64 * 112 * 112 * 4
    assert result["ratio"] >= 4


def test_cli_accepts_shipped_config_names_offline(tmp_path):
    from redistill_diffusion.cli import main

    out = tmp_path / "tiny.json"
    assert main(["memory", "tiny-ddpm-32", "--stem_stride", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ratio"] >= 3.9
    assert main(["memory", "no-such-config", "--stem_stride", "2"]) == 2


# --------------------------------------------------------------------------------- import graph


def _package_imports(file: Path) -> list[str]:
    """The redistill_diffusion modules ``file`` imports (relative imports resolved), anywhere in it."""
    import ast

    root = Path(__file__).resolve().parents[1]
    module = ".".join(file.resolve().relative_to(root).with_suffix("").parts)
    package = module.split(".")[:-1]  # the package a relative import starts from
    names = []
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.append(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return [name for name in names if name.startswith("redistill_diffusion")]


def test_memory_is_a_leaf_of_the_import_graph():
    """Both sides use the memory package; it imports neither (no cycle through the convention registry)."""
    import redistill_diffusion

    memory = Path(redistill_diffusion.__file__).parent / "memory"
    outside = {
        f"{file.name}: {name}"
        for file in memory.glob("*.py")
        for name in _package_imports(file)
        if not name.startswith("redistill_diffusion.memory")
    }
    assert not outside


def test_nothing_in_the_package_imports_by_string_but_the_cli():
    import redistill_diffusion

    root = Path(redistill_diffusion.__file__).parent
    # The CLI loads subcommands lazily.
    allowed = {root / "cli.py", root / "commands" / "train.py"}
    offenders = [
        str(file.relative_to(root))
        for file in root.rglob("*.py")
        if file not in allowed and ("import_module(" in file.read_text() or "__import__(" in file.read_text())
    ]
    assert not offenders


def test_timm_conventions_are_registered_by_the_classification_side():
    import redistill_diffusion.classification  # noqa: F401  (registers timm.ResNet / timm.MobileNet)

    assert {"timm.ResNet", "timm.MobileNet", "diffusers.UNet2DModel"} <= set(registered_paper_conventions())
