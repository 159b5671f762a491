"""Labelled image data for classification: the shared loader, a held-out validation slice, timm transforms.

Sources are those of `redistill_diffusion.data.load_image_dataset` (Hub id, imagefolder, parquet,
``redistill:shapes``). Evaluation data is either a slice held out of the training data
(``validation_split_size``, split with its own fixed seed so every run of a comparison sees the
same slice) or another dataset (``eval_data``). Transforms are timm's (`timm.data.create_transform`):
RandomResizedCrop + flip (+ colour jitter) for training, resize + centre crop for evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..data import ImageTensorDataset, load_image_dataset, select_subset


@dataclass
class ClassificationData:
    train: Any  # datasets.Dataset with columns image, label
    eval: Any | None
    label_names: list[str] | None
    num_classes: int


def _num_classes(dataset) -> tuple[int, list[str] | None]:
    feature = dataset.features.get("label")
    names = list(getattr(feature, "names", []) or []) or None
    if names:
        return len(names), names
    labels = dataset["label"]
    if not labels:
        raise ValueError("The dataset has no labels; pass a labelled dataset (and --label_column).")
    return max(0, int(max(labels))) + 1, None


def check_labels(dataset, num_classes: int, what: str) -> None:
    """Every label of ``dataset`` a class index in [0, num_classes), else one line saying which and what to do
    (cross-entropy would stop at the first batch with an IndexError otherwise)."""
    import datasets

    feature = dataset.features.get("label")
    if isinstance(feature, datasets.Value) and not (
        feature.dtype.startswith("int") or feature.dtype.startswith("uint")
    ):
        raise ValueError(
            f"The label column of {what} holds {feature.dtype} values, not class indices; pass --label_column "
            "naming a column of integer class indices."
        )
    labels = dataset["label"]
    if not labels:
        return
    low, high = int(min(labels)), int(max(labels))
    if low < 0:
        raise ValueError(
            f"{what} has label {low}: labels must be class indices >= 0 (-1 marks unlabelled rows, as in Hub "
            "test splits); pass a labelled split or drop those rows."
        )
    if high >= num_classes:
        raise ValueError(
            f"{what} has label {high}, but the model predicts {num_classes} classes (0-{num_classes - 1}); pass "
            f"--num_classes {high + 1} or more, or fix the labels."
        )


def split_validation(dataset, size: float, seed: int = 0):
    """(train, validation): ``size`` < 1 is a fraction, >= 1 a number of images; a fixed-seed shuffle."""
    if size <= 0:
        return dataset, None
    count = int(round(size * len(dataset))) if size < 1 else int(size)
    if not 0 < count < len(dataset):
        raise ValueError(
            f"--validation_split_size {size} leaves no training or no validation images out of {len(dataset)}; "
            f"pass a fraction in (0, 1) or a count below {len(dataset)}."
        )
    parts = dataset.train_test_split(test_size=count, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def load_classification_data(
    *,
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    data_files: list[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
    dataset_config_name: str | None = None,
    max_train_samples: int | None = None,
    validation_split_size: float = 0.0,
    validation_split_seed: int = 0,
    eval_data: str | None = None,
    eval_split: str = "test",
    max_eval_samples: int | None = None,
    builtin_num_images: int = 2048,
    builtin_resolution: int = 32,
    seed: int = 0,
    model_num_classes: int | None = None,
) -> ClassificationData:
    """Training and evaluation splits with labels; the validation slice is held out BEFORE
    ``max_train_samples`` is applied, so it never depends on how much training data is used.
    ``max_train_samples`` draws a random subset with ``seed`` (the run's seed), with or without a
    validation slice. Every label of both is checked against ``model_num_classes`` (--num_classes;
    default: the training data's count)."""
    if eval_data and validation_split_size > 0:
        raise ValueError("Give either --eval_data or --validation_split_size, not both.")
    common = dict(
        image_column=image_column, label_column=label_column, cache_dir=cache_dir, require_labels=True
    )
    full = load_image_dataset(
        dataset_name=dataset_name,
        train_data_dir=train_data_dir,
        data_files=data_files or None,
        dataset_config_name=dataset_config_name,
        builtin_num_images=builtin_num_images,
        builtin_resolution=builtin_resolution,
        **common,
    )
    num_classes, names = _num_classes(full)
    model_classes = num_classes if model_num_classes is None else int(model_num_classes)
    if model_classes < num_classes:
        raise ValueError(
            f"--num_classes {model_classes} is smaller than the {num_classes} classes of the training data; "
            f"pass --num_classes {num_classes} or more, or leave it out."
        )
    check_labels(full, model_classes, f"the training data ({dataset_name or train_data_dir or 'data_files'})")
    train, held_out = split_validation(full, validation_split_size, validation_split_seed)
    if eval_data:
        held_out = load_image_dataset(dataset_name=eval_data, split=eval_split, **common)
        check_labels(held_out, model_classes, f"--eval_data {eval_data} (split {eval_split})")
    train = select_subset(train, max_train_samples, seed)
    if held_out is not None and max_eval_samples is not None:
        held_out = held_out.select(range(min(int(max_eval_samples), len(held_out))))
    return ClassificationData(train, held_out, names, num_classes)


def build_classification_transform(
    input_size: tuple[int, int, int],
    is_training: bool,
    *,
    scale_min: float = 0.08,
    hflip: float = 0.5,
    color_jitter: float | None = 0.4,
    interpolation: str = "bilinear",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    crop_pct: float | None = None,
):
    """timm's train/eval transform; the image is decoded (`image_decoding.decode_image`) to the model's
    channel count first."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    from ..image_decoding import decode_image

    if not 0 < scale_min <= 1:
        raise ValueError(f"--train_crop_scale_min must lie in (0, 1], got {scale_min}.")
    kwargs: dict[str, Any] = dict(
        input_size=tuple(input_size),
        is_training=is_training,
        interpolation=interpolation,
        mean=tuple(mean or IMAGENET_DEFAULT_MEAN),
        std=tuple(std or IMAGENET_DEFAULT_STD),
    )
    if is_training:
        kwargs.update(scale=(scale_min, 1.0), hflip=hflip, color_jitter=color_jitter or 0.0)
    else:
        kwargs.update(crop_pct=crop_pct)
    pipeline = create_transform(**kwargs)
    mode = "L" if input_size[0] == 1 else "RGB"

    def transform(image) -> torch.Tensor:
        return pipeline(decode_image(image, mode))

    return transform


class AugmentedImageDataset(ImageTensorDataset):
    """The shared image/label wrapper whose random augmentation is a function of (seed, epoch, index).

    timm's transforms draw from Python's and torch's global RNGs. accelerate's dataloader fetches one
    batch ahead, so a checkpoint's saved global RNG state is already past the next batch and a resumed
    run would crop differently. Seeding every item from (seed, epoch, index) instead makes the
    augmentation identical after a resume, with any number of workers; the epoch comes from
    accelerate, which calls ``dataset.set_epoch`` when the sampler is set to a new epoch.
    """

    def __init__(self, dataset, transform, seed: int = 0):
        super().__init__(dataset, transform, with_labels=True)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        import random

        item_seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_033 + int(index)) % (2**63 - 1)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            try:
                return super().__getitem__(index)
            finally:
                random.setstate(python_state)


def as_tensor_dataset(dataset, transform, seed: int | None = None) -> ImageTensorDataset:
    """Items ``{"images": tensor, "labels": int}`` (the shared wrapper of `redistill_diffusion.data`);
    with ``seed``, random augmentation is reproducible per (seed, epoch, index)."""
    if seed is None:
        return ImageTensorDataset(dataset, transform, with_labels=True)
    return AugmentedImageDataset(dataset, transform, seed)


def data_config_for_card(input_size, *, interpolation: str, mean, std, crop_pct) -> Mapping[str, Any]:
    """The preprocessing saved in config.json's pretrained_cfg (what `load_classifier` users must apply)."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return {
        "input_size": tuple(input_size),
        "interpolation": interpolation,
        "mean": tuple(mean or IMAGENET_DEFAULT_MEAN),
        "std": tuple(std or IMAGENET_DEFAULT_STD),
        "crop_pct": 0.875 if crop_pct is None else float(crop_pct),
    }
