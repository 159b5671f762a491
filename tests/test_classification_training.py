"""Classification distillation in the shared training loop: every distiller trains, runs resume exactly."""

import json
import shutil

import pytest
import torch

from redistill_diffusion.classification import create_student, create_teacher
from redistill_diffusion.classification.data import load_classification_data, split_validation
from redistill_diffusion.classification.hub import load_classifier
from redistill_diffusion.classification.run import run_classifier
from redistill_diffusion.classification.task import ClassificationTask, build_classification_distiller
from redistill_diffusion.distillers import parse_distiller
from redistill_diffusion.training import StepContext

TINY = dict(channels=(8, 16, 16, 32), stem_type="deep", stem_width=4)
TINY_JSON = '{"channels": [8, 16, 16, 32], "stem_type": "deep", "stem_width": 4}'


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n=16, classes=4):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, classes, (n,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"images": self.images[i], "labels": int(self.labels[i])}


@pytest.mark.parametrize("name", ["vanilla", "student_plus", "kd", "fitnet", "at", "dkd", "red", "red+kd"])
def test_training_steps_for_every_distiller(name):
    torch.manual_seed(0)
    teacher = create_teacher("resnet18", num_classes=4, cifar_stem=True, **TINY)
    student = create_student(
        teacher, stem_stride=4, red_placement="paper" if parse_distiller(name).uses_red_blocks else None
    )
    distiller = build_classification_distiller(name, student, teacher, (3, 32, 32))
    task = ClassificationTask(
        student, RandomImages(), teacher=teacher, distiller=distiller, distiller_name=name
    )
    modules = task.trainable_modules()
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.05)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ctx = StepContext(
        modules=modules,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        global_step=0,
        accelerator=None,
    )
    batch = {"images": torch.randn(8, 3, 32, 32), "labels": torch.randint(0, 4, (8,))}
    for _ in range(2):
        losses = task.compute_losses(batch, ctx)
        total = (
            0.5 * losses.task + 0.5 * sum(losses.distillation.values())
            if losses.distillation
            else losses.task
        )
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    expected = {
        "vanilla": set(),
        "student_plus": set(),
        "kd": {"kd"},
        "fitnet": {"fitnet"},
        "at": {"at"},
        "dkd": {"dkd_tckd", "dkd_nckd"},
        "red": {"red"},
        "red+kd": {"red", "kd"},
    }[name]
    assert set(losses.distillation) == expected
    assert all(v.item() >= 0 for v in losses.distillation.values())
    assert not torch.equal(before["layer1.0.conv1.weight"], student.state_dict()["layer1.0.conv1.weight"])
    assert all(
        torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items()
    )  # frozen, BN stats too
    assert ("distiller" in modules) == (name == "fitnet")  # FitNet regressors train with the student
    if parse_distiller(name).uses_red_blocks:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.red_blocks.parameters())


def test_red_pairs_use_red_block_outputs():
    teacher = create_teacher("resnet18", num_classes=4, cifar_stem=True, **TINY)
    student = create_student(teacher, stem_stride=4)
    distiller = build_classification_distiller("red", student, teacher, (3, 32, 32), red_alpha=50.0)
    assert distiller.pairs == [
        ("red_blocks.conv1__output:output", "layer3.0:output"),
        ("red_blocks.layer2_0__input:output", "layer4.0:input"),
        ("red_blocks.layer2_0__output:output", "layer4.0:output"),
    ]
    assert distiller.alphas == [50.0] * 3
    with pytest.raises(ValueError, match="RED blocks"):
        build_classification_distiller(
            "red", create_student(teacher, stem_stride=4, red_placement=None), teacher, (3, 32, 32)
        )
    with pytest.raises(ValueError, match="teacher"):
        build_classification_distiller("kd", student, None, (3, 32, 32))


def test_validation_slice_is_fixed_and_held_out():
    data = load_classification_data(
        dataset_name="redistill:shapes",
        builtin_num_images=64,
        validation_split_size=0.25,
        max_train_samples=20,
    )
    again = load_classification_data(
        dataset_name="redistill:shapes", builtin_num_images=64, validation_split_size=0.25
    )
    assert len(data.eval) == 16 and len(data.train) == 20 and data.num_classes == 4
    assert (
        data.eval["image"][0].tobytes() == again.eval["image"][0].tobytes()
    )  # independent of max_train_samples
    with pytest.raises(ValueError, match="validation"):
        split_validation(data.train, 1.0 * len(data.train))
    with pytest.raises(ValueError, match="not both"):
        load_classification_data(
            dataset_name="redistill:shapes", validation_split_size=0.1, eval_data="x.parquet"
        )


@pytest.mark.shared_data
def test_cifar10_parquet_split(cifar10_parquet):
    data = load_classification_data(
        dataset_name=str(cifar10_parquet), validation_split_size=5000, max_train_samples=1000
    )
    assert len(data.eval) == 5000 and len(data.train) == 1000 and data.num_classes == 10


def _flags(output_dir, *extra):
    return [
        "--dataset_name",
        "redistill:shapes",
        "--builtin_num_images",
        "48",
        "--resolution",
        "32",
        "--validation_split_size",
        "16",
        "--output_dir",
        str(output_dir),
        "--train_batch_size",
        "8",
        "--optimizer",
        "sgd",
        "--learning_rate",
        "0.05",
        "--lr_warmup_steps",
        "1",
        "--use_ema",
        "False",
        "--logger",
        "none",
        "--eval_crop_pct",
        "1.0",
        "--seed",
        "3",
        *extra,
    ]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_teacher_then_student_runs_and_exact_resume(tmp_path):
    teacher_dir = tmp_path / "teacher"
    run_classifier(
        _flags(
            teacher_dir,
            "--model_name_or_path",
            "resnet18",
            "--timm_model_args",
            TINY_JSON,
            "--cifar_stem",
            "--distiller",
            "none",
            "--max_train_steps",
            "3",
            "--validation_epochs",
            "1",
            "--checkpointing_steps",
            "0",
        )
    )
    assert (teacher_dir / "best_model" / "metrics.json").is_file()
    teacher = load_classifier(teacher_dir)
    assert teacher.num_classes == 4

    student_flags = [
        "--teacher_model_name_or_path",
        str(teacher_dir),
        "--stem_stride",
        "4",
        "--distiller",
        "red+kd",
        "--red_alpha",
        "50",
        "--mixup_alpha",
        "0.2",
        "--checkpointing_steps",
        "2",
    ]
    full = run_classifier(_flags(tmp_path / "full", *student_flags, "--max_train_steps", "4"))
    assert full.global_step == 4
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["distiller"] == "red+kd" and results["peak_memory"]["exact"]["ratio"] >= 4
    assert set(results["metrics"]) >= {"top1", "top5", "teacher_top1", "best_top1"}
    assert results["spec"]["distillation_pairs"][0] == ["conv1:output", "layer3.0:output"]

    # the same run killed right after its step-2 checkpoint, then resumed from it
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run_classifier(
        _flags(
            tmp_path / "resumed",
            *student_flags,
            "--max_train_steps",
            "4",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-2")
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    student = load_classifier(tmp_path / "resumed")
    assert len(student.red_blocks) == 3 and student.redistill_spec.teacher["architecture"] == "resnet18"


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--distiller", "red"], "teacher_model_name_or_path"),
        (["--distiller", "none"], "model_name_or_path"),
        (["--distiller", "telepathy", "--teacher_model_name_or_path", "resnet18"], "Unknown distiller"),
        (
            [
                "--distiller",
                "kd",
                "--teacher_model_name_or_path",
                "resnet18",
                "--model_name_or_path",
                "resnet18",
            ],
            "derived",
        ),
    ],
)
def test_run_rejects_bad_flags_before_training(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        run_classifier(_flags(tmp_path / "bad", *flags))
    assert not (tmp_path / "bad" / "results.json").exists()


def test_task_weight_halves_the_plain_students_gradient(tmp_path):
    """Plain SGD with momentum is linear in the gradient: 0.5 x CE at twice the learning rate takes the same
    steps as 1 x CE, so equal weights after training show --task_weight reached the optimised loss."""
    common = [
        "--teacher_model_name_or_path",
        "resnet18",
        "--timm_model_args",
        TINY_JSON,
        "--cifar_stem",
        "--stem_stride",
        "4",
        "--student_init",
        "random",
        "--distiller",
        "vanilla",
        "--sgd_weight_decay",
        "0",
        "--max_train_steps",
        "3",
        "--checkpointing_steps",
        "0",
    ]
    full = _flags(tmp_path / "full", *common)
    half = _flags(tmp_path / "half", *common, "--task_weight", "0.5")
    half[half.index("--learning_rate") + 1] = "0.1"  # _flags' 0.05, doubled
    run_classifier(full)
    run_classifier(half)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "half")
    unchanged = _flags(tmp_path / "lr", *common)
    unchanged[unchanged.index("--learning_rate") + 1] = "0.1"
    run_classifier(unchanged)  # without the flag, twice the learning rate moves the weights elsewhere
    c = _weights(tmp_path / "lr")
    assert a.keys() == b.keys() == c.keys()
    moved = max((a[k] - c[k]).abs().max().item() for k in a)
    # The same steps up to float rounding (bitwise equal here; thread scheduling may reorder a reduction):
    # at least 1,000x closer than where twice the learning rate alone takes the weights.
    assert moved > 1e-3 and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3 * moved
    with pytest.raises(ValueError, match="--task_weight"):
        run_classifier(_flags(tmp_path / "bad", *common, "--task_weight", "0"))


def test_augmentation_depends_only_on_seed_epoch_and_index():
    from redistill_diffusion.classification.data import as_tensor_dataset, build_classification_transform

    data = load_classification_data(dataset_name="redistill:shapes", builtin_num_images=8)
    transform = build_classification_transform((3, 32, 32), True, scale_min=0.3)
    dataset = as_tensor_dataset(data.train, transform, seed=1)
    first = dataset[3]["images"]
    torch.manual_seed(123)  # the global RNG state must not matter
    assert torch.equal(dataset[3]["images"], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3]["images"], first)


def test_step_schedule_through_the_shared_trainer(tmp_path):
    """--lr_scheduler piecewise_constant --lr_step_rules: the step schedule of classification recipes.
    Also: a fresh run over an old output_dir does not compete with the old run's best model."""
    stale = tmp_path / "step" / "best_model"
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text(json.dumps({"top1": 2.0, "global_step": 1}))
    # An old run's file: its manifest lists it (a file no manifest lists is the user's and is kept, issue 24).
    (tmp_path / "step" / ".redistill_outputs.json").write_text(
        json.dumps({"files": ["best_model/metrics.json"]})
    )
    result = run_classifier(
        _flags(
            tmp_path / "step",
            "--model_name_or_path",
            "resnet18",
            "--timm_model_args",
            TINY_JSON,
            "--cifar_stem",
            "--distiller",
            "none",
            "--max_train_steps",
            "3",
            "--lr_scheduler",
            "piecewise_constant",
            "--lr_step_rules",
            "1:2,0.1",
            "--checkpointing_steps",
            "0",
            "--overwrite_output_dir",
        )
    )
    assert result.global_step == 3
    assert result.metrics["best_top1"] <= 1.0
    assert json.loads((stale / "metrics.json").read_text())["global_step"] == 3
    from redistill_diffusion.training.optimization import scaled_step_rules

    assert scaled_step_rules("1:2,0.1:5,0.01", 2) == "1:4,0.1:10,0.01"  # accelerate steps it once per process
    with pytest.raises(ValueError, match="lr_step_rules"):
        run_classifier(
            _flags(
                tmp_path / "bad_step",
                "--model_name_or_path",
                "resnet18",
                "--distiller",
                "none",
                "--lr_scheduler",
                "piecewise_constant",
            )
        )


def test_memory_in_results_ignores_autocast_forward():
    """Under --mixed_precision accelerate runs the prepared model's forward in autocast; the exact count
    must not see autocast's bf16 weight copies (they are weights, not activations)."""
    teacher = create_teacher("resnet18", num_classes=4, cifar_stem=True, **TINY)
    student = create_student(teacher, stem_stride=4)
    student.redistill_spec.input_size = (3, 32, 32)
    student.forward = torch.autocast("cpu", dtype=torch.bfloat16)(
        student.forward
    )  # what accelerate's prepare does
    task = ClassificationTask(student, RandomImages(), teacher=teacher)
    memory = task._memory(student)
    assert memory["exact"].ratio >= 4 and memory["paper"].ratio >= 4


def test_redistill_train_classifier_through_the_cli(tmp_path, capsys):
    """`redistill train classifier` end to end: a tiny timm ResNet on a two-class image folder made
    here, a few steps with the EMA (timm's, over BatchNorm statistics too), a loadable classifier."""
    import numpy as np
    from PIL import Image

    from redistill_diffusion.cli import main as cli_main

    data = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label, colour in (("dark", 40), ("light", 210)):
        (data / label).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(colour + rng.integers(-30, 30, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(data / label / f"{i}.png")
    out = tmp_path / "run"
    code = cli_main(
        [
            "train",
            "classifier",
            "--model_name_or_path",
            "resnet18",
            "--timm_model_args",
            TINY_JSON,
            "--cifar_stem",
            "--distiller",
            "none",
            "--train_data_dir",
            str(data),
            "--resolution",
            "32",
            "--output_dir",
            str(out),
            "--train_batch_size",
            "4",
            "--max_train_steps",
            "3",
            "--use_ema",
            "true",
            "--ema_warmup",
            "false",
            "--checkpointing_steps",
            "3",
            "--logger",
            "none",
            "--lr_warmup_steps",
            "1",
        ]
    )
    assert code == 0
    assert "Finished at step 3" in capsys.readouterr().out
    assert (out / "checkpoint-3" / "ema" / "ema_buffers.safetensors").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 3
    model = load_classifier(out)
    assert model.num_classes == 2
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 2)
