"""Data loading: offline shapes, parquet / imagefolder sources, column detection, channel conversion, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from redistill_diffusion.data import (
    BUILTIN_SHAPES,
    ImageTensorDataset,
    build_image_transform,
    load_image_dataset,
    make_shapes,
    open_dataset,
)


def test_shapes_are_deterministic_and_varied():
    images, labels = make_shapes(num_images=64, resolution=32, seed=0)
    again, again_labels = make_shapes(num_images=64, resolution=32, seed=0)
    other, _ = make_shapes(num_images=64, resolution=32, seed=1)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    assert not np.array_equal(images, other)
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert len({images[i].tobytes() for i in range(64)}) == 64  # no duplicates
    assert images.std() > 30  # real content, not a flat colour


def test_builtin_dataset_needs_no_files():
    dataset = load_image_dataset(BUILTIN_SHAPES, builtin_num_images=10, builtin_resolution=16, max_samples=6)
    assert len(dataset) == 6 and dataset.column_names == ["image", "label"]
    item = ImageTensorDataset(dataset, build_image_transform(16, 3), with_labels=True)[0]
    assert item["images"].shape == (3, 16, 16) and -1.0 <= item["images"].min() <= item["images"].max() <= 1.0
    assert isinstance(item["labels"], int)


def _write_parquet(path, column: str, n: int = 5, mode: str = "RGB"):
    import datasets

    images = [
        Image.fromarray((np.random.default_rng(i).random((20, 24, 3)) * 255).astype(np.uint8)).convert(mode)
        for i in range(n)
    ]
    datasets.Dataset.from_dict(
        {column: images, "label": list(range(n))},
        features=datasets.Features({column: datasets.Image(), "label": datasets.Value("int64")}),
    ).to_parquet(str(path))
    return path


def test_parquet_with_img_column_is_detected_and_resized(tmp_path):
    path = _write_parquet(tmp_path / "train.parquet", "img")
    dataset = load_image_dataset(str(path))  # a parquet path given as dataset_name
    assert dataset.column_names == ["image", "label"]
    same = load_image_dataset(data_files=[str(path)], image_column="img")
    assert len(same) == len(dataset) == 5
    tensor = build_image_transform(16, 3)(dataset[0]["image"])
    assert tensor.shape == (3, 16, 16)  # resized short side + centre crop


def test_training_and_evaluation_read_the_same_sources(tmp_path):
    """One opener: a saved dataset, a folder of parquet files and a parquet file train and serve as FID references."""
    import datasets

    from redistill_diffusion.evaluation.reference import load_reference

    parquet = _write_parquet(tmp_path / "one.parquet", "img", n=4)
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_parquet(shards / "train-0.parquet", "img", n=3)
    _write_parquet(shards / "train-1.parquet", "img", n=2)
    saved = tmp_path / "saved"
    datasets.load_dataset("parquet", data_files=str(parquet), split="train").save_to_disk(str(saved))
    for source, rows in ((parquet, 4), (shards, 5), (saved, 4)):
        assert len(open_dataset(str(source))) == rows
        train = load_image_dataset(str(source))
        reference = load_reference(str(source))
        assert len(train) == len(reference) == rows
        # The same first image either way (decoded once for training, as uint8 for the reference).
        expected = torch.from_numpy(np.array(train[0]["image"].convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(reference[0], expected)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_dataset(str(tmp_path / "missing.parquet"))


def test_grayscale_and_rgb_follow_the_model_channels(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    dataset = load_image_dataset(train_data_dir=str(folder))
    rgb = build_image_transform(8, channels=3)(dataset[2]["image"])
    gray = build_image_transform(8, channels=1)(dataset[2]["image"])
    assert rgb.shape == (3, 8, 8) and gray.shape == (1, 8, 8)
    assert torch.allclose(rgb[0], rgb[1]) and torch.allclose(rgb[0], gray[0])
    with pytest.raises(ValueError, match="1 or 3 channels"):
        build_image_transform(8, channels=4)


def test_clear_errors_for_bad_data(tmp_path):
    with pytest.raises(ValueError, match="No training data"):
        load_image_dataset()
    with pytest.raises(FileNotFoundError, match="not found"):
        load_image_dataset(data_files=[str(tmp_path / "missing.parquet")])
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_image_dataset(train_data_dir=str(tmp_path / "nowhere"))
    path = _write_parquet(tmp_path / "pics.parquet", "picture_data")
    with pytest.raises(ValueError, match="image column"):
        load_image_dataset(str(path))
    with pytest.raises(ValueError, match="no image column 'photo'"):
        load_image_dataset(str(path), image_column="photo")
    with pytest.raises(ValueError, match="--max_train_samples must be at least 1"):
        load_image_dataset(str(path), image_column="picture_data", max_samples=0)
    with pytest.raises(ValueError, match="label column"):
        load_image_dataset(BUILTIN_SHAPES, builtin_num_images=4, label_column="nope")


@pytest.mark.shared_data
def test_shared_cifar10_parquet_loads(cifar10_parquet):
    dataset = load_image_dataset(str(cifar10_parquet), max_samples=8)
    assert len(dataset) == 8 and dataset.column_names == ["image", "label"]
    assert build_image_transform(32, 3)(dataset[0]["image"]).shape == (3, 32, 32)


def _label_sorted_parquet(path, per_class: int = 20, classes: int = 5):
    """A parquet sorted by label, like ../shared CIFAR-10: the first rows are all class 0."""
    import datasets

    labels = [c for c in range(classes) for _ in range(per_class)]
    images = [Image.new("RGB", (8, 8), (10 * c, 3 * i % 255, 0)) for i, c in enumerate(labels)]
    datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    ).to_parquet(str(path))
    return path


def test_max_train_samples_is_a_seeded_random_subset_of_a_sorted_file(tmp_path, caplog):
    """Issue 15: the first N rows of a label-sorted file would hold one class; a seeded shuffle holds all."""
    import logging

    from redistill_diffusion.classification.data import load_classification_data

    path = str(_label_sorted_parquet(tmp_path / "sorted.parquet"))
    with caplog.at_level(logging.INFO, logger="redistill_diffusion"):
        diffusion = load_image_dataset(path, max_samples=20, seed=0)
    assert set(diffusion["label"]) == set(range(5))  # the first 20 rows are all class 0
    assert "covering 5 of 5 classes" in caplog.text
    again = load_image_dataset(path, max_samples=20, seed=0)
    other = load_image_dataset(path, max_samples=20, seed=1)
    rows = lambda d: [image.tobytes() for image in d["image"]]  # noqa: E731
    assert rows(again) == rows(diffusion) and rows(other) != rows(diffusion)

    for split in (0.0, 10):  # with and without a held-out slice
        data = load_classification_data(
            dataset_name=path, max_train_samples=20, validation_split_size=split, seed=0
        )
        same = load_classification_data(
            dataset_name=path, max_train_samples=20, validation_split_size=split, seed=0
        )
        assert len(data.train) == 20 and set(data.train["label"]) == set(range(5))
        assert rows(data.train) == rows(same.train)


def test_unbalanced_subset_is_warned_about(caplog):
    import datasets

    from redistill_diffusion.data import log_class_balance

    skewed = datasets.Dataset.from_dict({"label": [0] * 8 + [1, 2]})
    with caplog.at_level("INFO", logger="redistill_diffusion"):
        log_class_balance(skewed, num_classes=4)
    assert "covering 3 of 4 classes" in caplog.text
    assert any(r.levelname == "WARNING" and "class 0 holds 8 of 10" in r.getMessage() for r in caplog.records)
