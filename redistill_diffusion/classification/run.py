"""The classification run behind `examples/train_classifier_redistill.py`: flags -> task -> Trainer.

Two modes, one script:
- ``--distiller none`` (or ``vanilla`` without a teacher) trains ``--model_name_or_path`` (a timm
  or paper name, or a saved folder) as a plain classifier: a teacher.
- any other distiller derives the student from ``--teacher_model_name_or_path`` (a folder from a
  teacher run, or a timm/paper name) with ``--stem_stride``/``--strides`` and distils it.
Every input is checked before training starts.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataArguments, DistillationArguments, TrainingArguments, parse_args, to_dict
from ..distillers import distillation_options, parse_distiller
from ..files import check_output_dir_reads_nothing
from ..red import init_red_blocks
from ..redaction import redact_log_handlers
from ..training.checkpointing import STATE_FILE, resolve_resume_path
from ..training.outputs import recorded_outputs, write_text_atomic
from .data import (
    as_tensor_dataset,
    build_classification_transform,
    data_config_for_card,
    load_classification_data,
)
from .hub import load_classifier
from .spec import spec_of
from .students import create_student, create_teacher
from .task import PLAIN_TRAINING, ClassificationTask, build_classification_distiller

logger = logging.getLogger(__name__)


@dataclass
class ClassifierArguments(DistillationArguments):
    """Models, stride plan and classification-specific data handling, plus the shared distillation
    flags (`config.DistillationArguments`)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Model to train without a teacher (--distiller none): a timm name (resnet18), a paper name (resnext18, mobilenetv2, mobilenetv3_small), optionally with strides (resnext18-1-21222), or a saved folder."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Teacher to distil from: a folder written by a teacher run / save_classifier, or a timm/paper name."
        },
    )
    pretrained: bool = field(
        default=False,
        metadata={"help": "Start a timm-named model from timm's pretrained weights (downloads)."},
    )
    num_classes: int | None = field(default=None, metadata={"help": "Default: from the dataset's labels."})
    cifar_stem: bool = field(
        default=False,
        metadata={"help": "3x3 stride-1 stem without max-pool (32x32 inputs) for a model built from a name."},
    )
    timm_model_args: str | None = field(
        default=None,
        metadata={
            "help": "JSON of extra timm.create_model arguments, e.g. '{\"channels\": [16, 32, 64, 128]}'."
        },
    )
    model_strides: str | None = field(
        default=None,
        metadata={
            "help": "Paper stride notation for a model built from a name, e.g. 1-21222 (the STL10 ResNeXt18 teacher)."
        },
    )
    # A classifier's stem is conv x pool: the flag means the total stem stride here, with the paper's default.
    stem_stride: int = field(
        default=8,
        metadata={
            "help": "Student's total stem stride (conv x pool); the teacher's ImageNet ResNet stem has 4."
        },
    )
    stage_strides: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Student stage strides (default: the deepest stride-2 stages give back the extra stem stride)."
        },
    )
    strides: str | None = field(
        default=None,
        metadata={
            "help": "Student strides in the paper's notation (8-11221); overrides --stem_stride/--stage_strides."
        },
    )
    validation_split_size: float = field(
        default=0.0,
        metadata={"help": "Hold out this fraction (< 1) or number (>= 1) of training images for evaluation."},
    )
    validation_split_seed: int = field(
        default=0,
        metadata={
            "help": "Seed of the held-out slice (fixed across runs so they compare on the same images)."
        },
    )
    eval_data: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation data instead of a held-out slice: a parquet file, dataset folder or Hub id."
        },
    )
    eval_split: str = field(default="test", metadata={"help": "Split of --eval_data."})
    max_eval_samples: int | None = None
    eval_batch_size: int = 256
    train_crop_scale_min: float = field(
        default=0.08,
        metadata={"help": "RandomResizedCrop scale lower bound (0.08 ImageNet; ~0.35 for 32x32)."},
    )
    hflip: float = field(default=0.5, metadata={"help": "Horizontal flip probability."})
    color_jitter: float = field(default=0.4, metadata={"help": "timm colour jitter strength (0: off)."})
    interpolation: str = "bilinear"
    eval_crop_pct: float | None = field(
        default=None,
        metadata={"help": "Centre-crop fraction at evaluation (timm default 0.875; 1.0 for 32x32)."},
    )
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0


CLASSIFIER_ARGUMENTS = (TrainingArguments, DataArguments, ClassifierArguments)
# Where classification's defaults differ from the shared TrainingArguments: the reference code never clips
# gradients in classification (with RED alpha 50 a clipping budget would mostly go to the RED gradient).
CLASSIFIER_DEFAULTS = {"max_grad_norm": None}


def _timm_args(text: str | dict | None) -> dict[str, Any]:
    if not text:
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--timm_model_args must be a JSON object, got {text!r} ({error.msg}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"--timm_model_args must be a JSON object, got {text!r}.")
    return value


def _is_folder(name: str) -> bool:
    return Path(name).expanduser().is_dir()


def _load_or_create(name: str, args: ClassifierArguments, num_classes: int, input_size) -> Any:
    if _is_folder(name):
        model = load_classifier(name)
        if model.num_classes != num_classes:
            raise ValueError(
                f"{name} predicts {model.num_classes} classes, the data has {num_classes}; pass a model trained "
                f"on these classes (or --num_classes {model.num_classes} if the data uses fewer)."
            )
        return model.train()
    return create_teacher(
        name,
        num_classes=num_classes,
        cifar_stem=args.cifar_stem,
        strides=args.model_strides,
        pretrained=args.pretrained,
        input_size=input_size,
        **_timm_args(args.timm_model_args),
    )


def _validate(args: ClassifierArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """Check the flags before anything is loaded; returns the distiller's options (the one routing of
    the option flags, `distillers.distillation_options`: an option the method does not take stops here)."""
    options: dict[str, Any] = {}
    plain = args.distiller == PLAIN_TRAINING
    if not plain:
        method = parse_distiller(args.distiller)  # unknown names raise here
        options = distillation_options(args.distiller, args)
        plain = method.parts == ("vanilla",) and not args.teacher_model_name_or_path
    if plain and not args.model_name_or_path:
        raise ValueError("Plain training (--distiller none) needs --model_name_or_path.")
    if not plain and not args.teacher_model_name_or_path:
        raise ValueError(f"--distiller {args.distiller} needs --teacher_model_name_or_path.")
    if not plain and args.model_name_or_path:
        raise ValueError("With a teacher the student is derived from it; drop --model_name_or_path.")
    if training_args.use_ema:
        logger.info(
            "EMA averages the student's parameters and its float buffers (BatchNorm running statistics, in RED "
            "blocks too) with the same decay."
        )
    return options


def _warn_if_stem_cut_is_moot(args: ClassifierArguments, resolution: int) -> None:
    """At an input no larger than the student's stem stride, its stem leaves a 1-pixel map: the student
    saves almost no peak memory (resnet18 at 8 px with stem stride 8: 1.01x)."""
    stem = int(args.strides.split("-")[0]) if args.strides else args.stem_stride
    if resolution <= stem:
        logger.warning(
            "At --resolution %d the student's stem stride %d leaves a 1-pixel feature map, so it saves almost "
            "no peak memory over the teacher; train at a larger --resolution (or check with `redistill memory "
            "--timm NAME --resolution %d`).",
            resolution,
            stem,
            resolution,
        )


def _load_data(args: ClassifierArguments, data_args: DataArguments, training_args: TrainingArguments):
    """The training and evaluation splits (`load_classification_data`) the flags name."""
    return load_classification_data(
        dataset_name=data_args.dataset_name,
        train_data_dir=data_args.train_data_dir,
        data_files=data_args.data_files,
        image_column=data_args.image_column,
        label_column=data_args.label_column,
        cache_dir=data_args.cache_dir,
        dataset_config_name=data_args.dataset_config_name,
        max_train_samples=data_args.max_train_samples,
        validation_split_size=args.validation_split_size,
        validation_split_seed=args.validation_split_seed,
        eval_data=args.eval_data,
        eval_split=args.eval_split,
        max_eval_samples=args.max_eval_samples,
        builtin_num_images=data_args.builtin_num_images,
        builtin_resolution=data_args.resolution or 32,
        seed=training_args.seed,
        model_num_classes=args.num_classes,
    )


def _teacher_and_student(
    args: ClassifierArguments, num_classes: int, input_size: tuple[int, int, int], resolution: int
) -> tuple[Any, Any]:
    """With a teacher: the teacher and the student derived from it (RED blocks where the method uses them);
    plain training: no teacher and the model of --model_name_or_path."""
    if not (args.teacher_model_name_or_path and args.distiller != PLAIN_TRAINING):
        student = _load_or_create(args.model_name_or_path, args, num_classes, input_size)
        spec_of(student).input_size = input_size
        return None, student
    teacher = _load_or_create(args.teacher_model_name_or_path, args, num_classes, input_size)
    if not _is_folder(args.teacher_model_name_or_path) and not args.pretrained:
        logger.warning(
            "The teacher %s has random weights (not a trained folder, no --pretrained).",
            args.teacher_model_name_or_path,
        )
    student = create_student(
        teacher,
        stem_stride=args.stem_stride,
        stage_strides=args.stage_strides or None,
        strides=args.strides,
        init=args.student_init,
        red_placement="paper" if parse_distiller(args.distiller).uses_red_blocks else None,
        red_kernel_size=args.red_kernel_size,
        red_variant=args.red_variant,
        red_norm=args.red_norm,
    )
    spec_of(student).input_size = input_size
    init_red_blocks(student, args.red_init)
    _warn_if_stem_cut_is_moot(args, resolution)
    return teacher, student


def _resume_step(training_args: TrainingArguments) -> int | None:
    """The step --resume_from_checkpoint continues from (None for a fresh run)."""
    resume_path = resolve_resume_path(training_args.output_dir, training_args.resume_from_checkpoint)
    if resume_path is None:
        return None
    with open(resume_path / STATE_FILE, encoding="utf-8") as handle:
        return int(json.load(handle)["global_step"])


def build_classification_task(
    args: ClassifierArguments, data_args: DataArguments, training_args: TrainingArguments
) -> ClassificationTask:
    """Data, models, distiller and task, with every check done before training."""
    import timm.data

    options = _validate(args, training_args)
    if data_args.resolution is not None and data_args.resolution < 8:
        raise ValueError(
            f"--resolution must be at least 8 pixels, got {data_args.resolution}; leave it out for 32 (with "
            "--cifar_stem) or 224."
        )
    data = _load_data(args, data_args, training_args)
    num_classes = args.num_classes or data.num_classes
    resolution = data_args.resolution or (32 if args.cifar_stem else 224)
    input_size = (3, resolution, resolution)

    teacher, student = _teacher_and_student(args, num_classes, input_size, resolution)
    in_chans = student.in_chans
    input_size = (in_chans, resolution, resolution)
    distiller = build_classification_distiller(args.distiller, student, teacher, input_size, **options)

    model_data = timm.data.resolve_model_data_config(student)
    mean, std = model_data["mean"], model_data["std"]
    common = dict(interpolation=args.interpolation, mean=mean, std=std)
    train_transform = build_classification_transform(
        input_size,
        True,
        scale_min=args.train_crop_scale_min,
        hflip=args.hflip,
        color_jitter=args.color_jitter,
        **common,
    )
    eval_transform = build_classification_transform(input_size, False, crop_pct=args.eval_crop_pct, **common)
    mixup = None
    if args.mixup_alpha > 0 or args.cutmix_alpha > 0:
        mixup = timm.data.Mixup(
            mixup_alpha=args.mixup_alpha,
            cutmix_alpha=args.cutmix_alpha,
            label_smoothing=args.label_smoothing,
            num_classes=num_classes,
        )
    resume_step = _resume_step(training_args)
    source = data_args.dataset_name or data_args.train_data_dir or ", ".join(data_args.data_files)
    return ClassificationTask(
        student,
        as_tensor_dataset(data.train, train_transform, seed=training_args.seed),
        teacher=teacher,
        teacher_mode=args.teacher_mode,
        distiller=distiller,
        distiller_name=args.distiller,
        eval_dataset=as_tensor_dataset(data.eval, eval_transform) if data.eval is not None else None,
        eval_batch_size=args.eval_batch_size,
        label_smoothing=args.label_smoothing,
        mixup=mixup,
        label_names=data.label_names,
        data_config=data_config_for_card(input_size, crop_pct=args.eval_crop_pct, **common),
        resume_step=resume_step,
        dataset_description=f"{source} ({len(data.train)} training images"
        + (f", {len(data.eval)} held-out/evaluation images)" if data.eval is not None else ")"),
    )


def run_classifier(argv: Sequence[str] | None = None, hub_api: Any = None):
    """Parse flags (+ ``--recipe``), create the Trainer first (seed, output_dir checks), build the task, train."""
    from ..training.trainer import Trainer

    training_args, data_args, cls_args = parse_args(CLASSIFIER_ARGUMENTS, argv, defaults=CLASSIFIER_DEFAULTS)
    _validate(cls_args, training_args)
    check_output_dir_reads_nothing(
        training_args.output_dir,
        {
            "--teacher_model_name_or_path": cls_args.teacher_model_name_or_path,
            "--model_name_or_path": cls_args.model_name_or_path,
        },
    )
    config = to_dict(training_args, data_args, cls_args)
    with Trainer(
        training_args, project_name="train_classifier_redistill", config=config, hub_api=hub_api
    ) as trainer:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
        logging.getLogger("redistill_diffusion").setLevel(
            logging.INFO if trainer.accelerator.is_main_process else logging.ERROR
        )
        redact_log_handlers()
        task = build_classification_task(cls_args, data_args, training_args)
        from ..model_cards import training_command

        task.command = training_command(sys.argv[1:] if argv is None else argv, "redistill train classifier")
        result = trainer.train(task)
    results_path = Path(training_args.output_dir) / "results.json"
    # Only the run's own results.json (a user's file of that name was kept, not replaced: outputs.staged).
    if trainer.accelerator.is_main_process and "results.json" in (
        recorded_outputs(results_path.parent) or []
    ):
        if results_path.is_file():
            with open(results_path, encoding="utf-8") as handle:
                results = json.load(handle)
            results["seconds_per_step"] = result.seconds_per_step
            results["train_batch_size"] = training_args.train_batch_size
            write_text_atomic(results_path, json.dumps(results, indent=2))
    return result


__all__ = ["CLASSIFIER_ARGUMENTS", "ClassifierArguments", "build_classification_task", "run_classifier"]
