"""One distillation path for both tasks: shared flags, option routing, builder, RED convention, training step."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from helpers_training import fast_args, make_tiny_teacher

from redistill_diffusion.classification import create_student, create_teacher
from redistill_diffusion.classification.run import (
    CLASSIFIER_ARGUMENTS,
    CLASSIFIER_DEFAULTS,
    ClassifierArguments,
    run_classifier,
)
from redistill_diffusion.classification.task import ClassificationTask, build_classification_distiller
from redistill_diffusion.config import DataArguments, DistillationArguments, parse_args
from redistill_diffusion.diffusion.arguments import DDPMArguments, StudentArguments
from redistill_diffusion.diffusion.run import REDISTILL_ARGUMENTS, run_redistill
from redistill_diffusion.diffusion.task import build_redistill_task
from redistill_diffusion.distillers import (
    all_distiller_options,
    build_distiller,
    distillation_options,
    parse_distiller,
)
from redistill_diffusion.training import StepContext

TINY_CLASSIFIER = dict(channels=(8, 16, 16, 32), stem_type="deep", stem_width=4)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    return make_tiny_teacher(tmp_path_factory.mktemp("teacher") / "pipeline")


def _ctx(modules):
    return StepContext(
        modules=modules,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        global_step=0,
        accelerator=None,
    )


def _diffusion_task(teacher_dir, **student):
    student_args = StudentArguments(teacher_model_name_or_path=str(teacher_dir), **student)
    data_args = DataArguments(dataset_name="redistill:shapes", builtin_num_images=8)
    return build_redistill_task(student_args, data_args, DDPMArguments())


def _diffusion_step(task):
    """One optimizer step of a built diffusion task; returns its losses and the student's gradients."""
    modules = task.trainable_modules()
    optimizer = torch.optim.SGD([p for m in modules.values() for p in m.parameters()], lr=0.01)
    batch = {"images": torch.stack([task.dataset[i]["images"] for i in range(4)])}
    losses = task.compute_losses(batch, _ctx(modules))
    total = 0.5 * losses.task + 0.5 * sum(losses.distillation.values())
    optimizer.zero_grad()
    total.backward()
    grads = {k: p.grad.clone() for k, p in task.model.named_parameters() if p.grad is not None}
    optimizer.step()
    return losses, total, grads


# --------------------------------------------------------------------------- shared flags
def test_both_tasks_inherit_the_distillation_flags_and_keep_their_defaults():
    assert issubclass(StudentArguments, DistillationArguments)
    assert issubclass(ClassifierArguments, DistillationArguments)
    fields = {f.name: f for f in dataclasses.fields(DistillationArguments)}
    # Every method option is a flag (and nothing else is): a new distiller option cannot miss its flag.
    options = set(all_distiller_options())
    assert options <= set(fields)
    assert {name for name in fields if name not in options} == {
        "stem_stride",
        "student_init",
        "teacher_mode",
        "distiller",
        "red_kernel_size",
        "red_variant",
        "red_norm",
        "red_init",
    }
    # Unset option flags are None: the method's own default applies.
    assert all(fields[name].default is None for name in options)
    # Task defaults as before: the UNet stem conv stride 2, the classifier's total stem stride 8,
    # and no gradient clipping in classification.
    *_, student = parse_args(REDISTILL_ARGUMENTS, [])
    training, _, classifier = parse_args(CLASSIFIER_ARGUMENTS, [], defaults=CLASSIFIER_DEFAULTS)
    assert (student.stem_stride, classifier.stem_stride, training.max_grad_norm) == (2, 8, None)
    assert parse_args(REDISTILL_ARGUMENTS, [])[0].max_grad_norm == 1.0
    assert student.distiller == classifier.distiller == "red"
    # RED normalisation: GroupNorm in denoisers (issue 16, docs/red_norm.md), the paper's BatchNorm in classifiers.
    assert (student.red_norm, classifier.red_norm) == ("group", "batch")


def test_option_routing_reads_every_option_and_tolerates_other_methods_defaults():
    args = StudentArguments(red_alpha=2.0, red_distance="mse")
    assert distillation_options("red", args) == {"red_alpha": 2.0, "red_distance": "mse"}
    assert build_distiller("red", pairs=[("a", "b")], **distillation_options("red", args)).alphas == [2.0]
    # A recipe may state its own method's defaults and still run another method ...
    assert distillation_options("output_mse", {"red_alpha": 1.0, "red_distance": "cosine"}) == {}
    # ... but a value that would change a method that is not run is an error, as is a name no method has.
    with pytest.raises(
        ValueError,
        match=r"Distiller 'output_mse' does not take option\(s\) red_alpha; it accepts: output_mse_weight\.",
    ):
        distillation_options("output_mse", {"red_alpha": 50.0})
    with pytest.raises(ValueError, match="Unknown distillation option.*red_alhpa"):
        distillation_options("red", {"red_alhpa": 2.0})


def test_distiller_names_are_parsed_once_for_both_tasks():
    spec = parse_distiller(" RED + Output_MSE ")
    assert spec.name == "red+output_mse" and spec.parts == ("red", "output_mse")
    assert spec.uses_red_blocks and spec.uses_pairs and spec.requires_teacher
    assert spec.options == {"red_alpha": 1.0, "red_distance": "cosine", "output_mse_weight": 1.0}
    assert (
        parse_distiller("student_plus").uses_red_blocks
        and not parse_distiller("student_plus").requires_teacher
    )
    assert not parse_distiller("fitnet").uses_red_blocks and parse_distiller("fitnet").uses_pairs
    assert not parse_distiller("kd").uses_pairs


def test_unknown_options_are_rejected_identically_by_both_tasks(tmp_path, tiny_teacher):
    """The same one-line error, from the command line of either task, before any model is built."""
    expected = "Distiller 'red' does not take option(s) kd_temperature; it accepts: red_alpha, red_distance."
    with pytest.raises(ValueError) as diffusion:
        run_redistill(
            fast_args(tmp_path / "ddpm", steps=1)
            + [
                "--teacher_model_name_or_path",
                str(tiny_teacher),
                "--distiller",
                "red",
                "--kd_temperature",
                "3",
            ]
        )
    with pytest.raises(ValueError) as classification:
        run_classifier(
            [
                "--dataset_name",
                "redistill:shapes",
                "--builtin_num_images",
                "8",
                "--resolution",
                "32",
                "--output_dir",
                str(tmp_path / "cls"),
                "--logger",
                "none",
                "--max_train_steps",
                "1",
                "--teacher_model_name_or_path",
                "resnet18",
                "--distiller",
                "red",
                "--kd_temperature",
                "3",
            ]
        )
    assert str(diffusion.value) == str(classification.value) == expected
    assert not list(tmp_path.glob("*/checkpoint-*"))


# --------------------------------------------------------------------------- the diffusion builder
def test_distill_pairs_through_the_diffusion_task_builder(tiny_teacher):
    pair = "conv_in:output=down_blocks.0.downsamplers.0:output"
    task = _diffusion_task(tiny_teacher, distiller="red", distill_pairs=[pair], red_alpha=2.0)
    student = task.model
    # The RED block sits where the explicit pair says (the preset is replaced), recorded in the config ...
    assert list(student.red_blocks.keys()) == ["conv_in__output"]
    assert student.config.red_placement == [{"tap": "conv_in:output", "channels": 8}]
    # ... and the RED loss reads the block's output (the one convention of both tasks).
    assert task.distiller.pairs == [
        ("red_blocks.conv_in__output:output", "down_blocks.0.downsamplers.0:output")
    ]
    assert task.distiller.alphas == [2.0] and task.card["details"]["RED placement"] == "explicit pairs"
    losses, total, grads = _diffusion_step(task)
    assert set(losses.distillation) == {"red"} and torch.isfinite(total)
    assert grads["conv_in.weight"].abs().sum() > 0

    # A feature method without RED blocks keeps the module taps; FitNet's regressor gets the probed widths.
    fitnet = _diffusion_task(
        tiny_teacher, distiller="fitnet", distill_pairs=["conv_in=down_blocks.1.resnets.0"]
    )
    assert len(fitnet.model.red_blocks) == 0
    assert fitnet.distiller.pairs == [("conv_in:output", "down_blocks.1.resnets.0:output")]
    (regressor,) = fitnet.distiller.regressors.values()
    assert (regressor.in_channels, regressor.out_channels) == (8, 16)

    with pytest.raises(ValueError, match="different spatial sizes"):
        _diffusion_task(
            tiny_teacher,
            distiller="red",
            distill_pairs=["conv_in:output=down_blocks.1.downsamplers.0:output"],
        )
    with pytest.raises(ValueError, match="no module named 'nope'"):
        _diffusion_task(tiny_teacher, distiller="at", distill_pairs=["nope:output=conv_in:output"])
    with pytest.raises(ValueError, match="must look like"):
        _diffusion_task(tiny_teacher, distiller="red", distill_pairs=["conv_in:output"])
    with pytest.raises(ValueError, match="needs RED blocks"):
        _diffusion_task(tiny_teacher, distiller="red", red_preset="none")


# --------------------------------------------------------------------------- RED variants, bf16
@pytest.mark.parametrize("variant", ["no_gate", "no_residual", "no_shortcut"])
def test_red_variants_train_in_both_tasks(tiny_teacher, variant):
    task = _diffusion_task(tiny_teacher, distiller="red", red_variant=variant)
    blocks = list(task.model.red_blocks.values())
    assert blocks and all(b.variant == variant for b in blocks)
    assert all(hasattr(b, "gate") == (variant != "no_gate") for b in blocks)
    assert all(hasattr(b, "residual") == (variant != "no_residual") for b in blocks)
    losses, total, grads = _diffusion_step(task)
    assert torch.isfinite(total) and losses.distillation["red"] > 0
    assert grads["conv_in.weight"].abs().sum() > 0
    assert all(grads[f"red_blocks.{k}"].abs().sum() > 0 for k, _ in task.model.red_blocks.named_parameters())

    torch.manual_seed(0)
    teacher = create_teacher("resnet18", num_classes=4, cifar_stem=True, **TINY_CLASSIFIER)
    student = create_student(teacher, stem_stride=4, red_variant=variant)
    assert student.redistill_spec.red_variant == variant
    distiller = build_classification_distiller("red", student, teacher, (3, 32, 32))
    cls_task = ClassificationTask(student, [], teacher=teacher, distiller=distiller)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    cls_losses = cls_task.compute_losses(batch, _ctx(cls_task.trainable_modules()))
    (cls_losses.task + sum(cls_losses.distillation.values())).backward()
    assert torch.isfinite(cls_losses.distillation["red"])
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.red_blocks.parameters())


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state whose precision cannot change: reset it around a bf16 run."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_bf16_autocast_training_steps(tmp_path, tiny_teacher, fresh_accelerator_state):
    """--mixed_precision bf16 through the whole loop (accelerate's autocast on this CPU), and the
    classification step with a trainable FitNet regressor under autocast."""
    result = run_redistill(
        fast_args(tmp_path / "bf16", steps=2)
        + [
            "--teacher_model_name_or_path",
            str(tiny_teacher),
            "--distiller",
            "red+output_mse",
            "--mixed_precision",
            "bf16",
            "--use_ema",
            "false",
        ]
    )
    logs = result.last_logs
    assert result.global_step == 2 and torch.isfinite(torch.tensor(logs["loss"]))
    assert {"loss/red", "loss/output_mse"} <= set(logs)

    torch.manual_seed(0)
    teacher = create_teacher("resnet18", num_classes=4, cifar_stem=True, **TINY_CLASSIFIER)
    student = create_student(teacher, stem_stride=4, red_placement=None)
    distiller = build_classification_distiller("fitnet", student, teacher, (3, 32, 32))
    task = ClassificationTask(student, [], teacher=teacher, distiller=distiller)
    batch = {"images": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 3])}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = task.compute_losses(batch, _ctx(task.trainable_modules()))
    total = losses.task + sum(losses.distillation.values())
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.parameters())


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_trains_in_bf16_only_where_it_is_native(
    tmp_path, tiny_teacher, fresh_accelerator_state, monkeypatch, native
):
    """--mixed_precision auto (what the parity recipe uses): bf16 on a CPU with AVX512-BF16 / AMX, fp32 on the
    others, where emulated bf16 is slower than fp32; the run's accelerator and its saved config say which."""
    from redistill_diffusion.training import run_checks
    from redistill_diffusion.training.trainer import Trainer

    monkeypatch.setattr(run_checks, "native_bf16", lambda: native)
    seen = {}
    init = Trainer.__init__

    def recording_init(self, args, *rest, **kwargs):
        init(self, args, *rest, **kwargs)
        seen["accelerator"] = self.accelerator.mixed_precision
        seen["config"] = self.config.get("mixed_precision")

    monkeypatch.setattr(Trainer, "__init__", recording_init)
    out = tmp_path / "auto"
    result = run_redistill(
        fast_args(out, steps=1)
        + [
            "--teacher_model_name_or_path",
            str(tiny_teacher),
            "--mixed_precision",
            "auto",
            "--use_ema",
            "false",
        ]
    )
    expected = "bf16" if native else "no"
    assert result.global_step == 1 and seen == {"accelerator": expected, "config": expected}
    assert run_checks.resolve_mixed_precision("fp16") == "fp16"


# --------------------------------------------------------------------------- the UNet student's signature
def test_student_init_mirrors_unet2dmodel_init():
    """A diffusers upgrade that adds, removes or re-defaults a UNet2DModel argument fails here, not in a
    saved student that silently drops it."""
    from diffusers import UNet2DModel

    from redistill_diffusion import ReDistillUNet2DModel

    base = inspect.signature(UNet2DModel.__init__).parameters
    ours = inspect.signature(ReDistillUNet2DModel.__init__).parameters
    assert list(ours)[: len(base)] == list(base)
    assert list(ours)[len(base) :] == [
        "stem_stride",
        "output_head",
        "red_placement",
        "red_kernel_size",
        "red_variant",
        "red_norm",
        "subpixel_skip",
        "refiner_channels",
        "stem",
        "input_skip",
        "refiner_depth",
        "input_skip_mixing",
    ]
    for name, parameter in base.items():
        assert (ours[name].kind, ours[name].default) == (parameter.kind, parameter.default), name
    # ... and every argument reaches UNet2DModel: a stride-1 student is its teacher, config and weights.
    config = dict(
        sample_size=8,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=4,
        freq_shift=1,
        flip_sin_to_cos=False,
        norm_eps=1e-6,
        act_fn="silu",
        resnet_time_scale_shift="scale_shift",
        mid_block_scale_factor=0.5,
        dropout=0.1,
    )
    teacher = UNet2DModel(**config)
    student = ReDistillUNet2DModel.from_teacher(teacher, stem_stride=1)
    assert all(student.config[k] == teacher.config[k] for k in base if k != "self")
    shapes = {k: v.shape for k, v in teacher.state_dict().items()}
    assert {k: v.shape for k, v in student.state_dict().items()} == shapes


@pytest.mark.parametrize("kind", ["unet", "classifier"])
def test_frozen_teacher_runs_in_channels_last_with_the_same_outputs(kind):
    """freeze_teacher lays the teacher's 4D weights out channels_last (its forward is 1.25-1.8x faster on CPUs;
    benchmarks/bench_teacher_layout.py) without changing what it computes beyond float rounding."""
    import copy

    from redistill_diffusion.training.task import freeze_teacher

    torch.manual_seed(0)
    if kind == "unet":
        from diffusers import UNet2DModel
        from helpers_training import TINY_UNET

        model = UNet2DModel(**TINY_UNET)
        inputs = (torch.randn(2, 3, 16, 16), torch.tensor([10, 900]))
    else:
        model = create_teacher(
            "resnet18", num_classes=10, cifar_stem=True, input_size=(3, 32, 32), channels=[8, 16, 16, 16]
        )
        inputs = (torch.randn(2, 3, 32, 32),)
    reference = copy.deepcopy(model).eval()
    assert freeze_teacher(model) == "eval"
    convs = [p for p in model.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    with torch.no_grad():
        ours, theirs = model(*inputs), reference(*inputs)
    ours, theirs = (getattr(o, "sample", o) for o in (ours, theirs))
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-4)
