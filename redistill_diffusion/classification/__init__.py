"""ReDistill on timm classifiers: stride surgery, students, RED placement, the classification task.

from redistill_diffusion.classification import create_teacher, create_student
teacher = create_teacher("resnet18", num_classes=1000)
student = create_student(teacher, stem_stride=8)   # the paper's ImageNet student, RED blocks attached
"""

from ..evaluation.extractors import register_classifier_loader
from ..red import red_feature_tap
from . import memory_convention  # noqa: F401  (registers the paper convention for timm families)
from .hub import card_for, is_saved_classifier, load_classifier, push_classifier_to_hub, save_classifier
from .placement import downsampling_taps, paper_pairs, red_block_specs
from .spec import ClassifierSpec, build_classifier, spec_of
from .students import PAPER_ARCHITECTURES, attach_red, create_student, create_teacher
from .surgery import (
    StridePlan,
    apply_cifar_stem,
    apply_stride_plan,
    model_family,
    parse_stride_notation,
    read_stride_plan,
    student_stride_plan,
)
from .task import ClassificationTask, build_classification_distiller

# `redistill eval --feature_extractor classifier`: FD on the features of a classifier saved here.
register_classifier_loader(
    "classifier",
    load_classifier,
    wrote=is_saved_classifier,
    expects="a folder written by save_classifier (config.json + model.safetensors) or a Hub id",
)

__all__ = [
    "PAPER_ARCHITECTURES",
    "ClassificationTask",
    "build_classification_distiller",
    "card_for",
    "load_classifier",
    "push_classifier_to_hub",
    "save_classifier",
    "ClassifierSpec",
    "StridePlan",
    "apply_cifar_stem",
    "apply_stride_plan",
    "attach_red",
    "build_classifier",
    "create_student",
    "create_teacher",
    "downsampling_taps",
    "model_family",
    "paper_pairs",
    "parse_stride_notation",
    "read_stride_plan",
    "red_block_specs",
    "red_feature_tap",
    "spec_of",
    "student_stride_plan",
]
