"""Images from a Hub dataset, an ``imagefolder`` directory, parquet/csv/json files or the built-in
offline shapes -> a torch Dataset of normalised image tensors (and labels when asked for).

Shared by diffusion (images only) and classification (images + labels). All sources go through
`datasets`, so the same code reads ``uoft-cs/cifar10`` from the Hub, ``../shared/data/cifar10/train.parquet``
and a folder of PNGs. ``dataset_name="redistill:shapes"`` needs neither the Hub nor any file: it
draws deterministic coloured shapes, which is what the offline quickstart and the tests train on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_COLUMN_CANDIDATES = ("image", "img", "images", "pixel_values", "picture")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class")
BUILTIN_SHAPES = "redistill:shapes"
_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


# ---------------------------------------------------------------------------------------------
# Built-in offline data: coloured shapes
# ---------------------------------------------------------------------------------------------
SHAPE_CLASSES = ("disc", "square", "triangle", "ring")


def make_shapes(num_images: int = 2048, resolution: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic coloured shapes on a two-tone background: uint8 images (N, H, W, 3) and labels.

    Simple enough that a tiny DDPM learns it in minutes on a CPU, varied enough (4 shapes, random
    colour, size and position) that a sample grid shows whether the model learned anything.
    """
    if num_images < 1 or resolution < 8:
        raise ValueError(
            f"make_shapes needs num_images >= 1 and resolution >= 8, got {num_images}, {resolution}."
        )
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:resolution, 0:resolution].astype(np.float32) + 0.5
    images = np.empty((num_images, resolution, resolution, 3), dtype=np.uint8)
    labels = rng.integers(0, len(SHAPE_CLASSES), size=num_images)
    for i, label in enumerate(labels):
        top, bottom = rng.uniform(0, 80, size=3), rng.uniform(0, 80, size=3)
        background = top + (bottom - top) * (ys / resolution)[..., None]
        color = rng.uniform(120, 255, size=3)
        color[rng.integers(0, 3)] = rng.uniform(0, 60)  # saturated colours, clearly off the background
        radius = rng.uniform(0.18, 0.32) * resolution
        cy, cx = rng.uniform(radius, resolution - radius, size=2)
        dy, dx = ys - cy, xs - cx
        if SHAPE_CLASSES[label] == "disc":
            mask = dy**2 + dx**2 <= radius**2
        elif SHAPE_CLASSES[label] == "square":
            mask = (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
        elif SHAPE_CLASSES[label] == "triangle":
            mask = (dy <= radius * 0.7) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
        else:  # ring
            dist2 = dy**2 + dx**2
            mask = (dist2 <= radius**2) & (dist2 >= (0.55 * radius) ** 2)
        image = np.where(mask[..., None], color, background)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _shapes_dataset(num_images: int, resolution: int):
    import datasets

    if num_images < 1:
        raise ValueError(f"--builtin_num_images must be at least 1, got {num_images}.")
    if resolution < 8:
        raise ValueError(
            f"redistill:shapes draws images of at least 8 pixels, got --resolution {resolution}; pass a larger one."
        )

    images, labels = make_shapes(num_images=num_images, resolution=resolution)
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(a) for a in images], "label": labels.tolist()},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(SHAPE_CLASSES))}
        ),
    )


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def _builder_for_files(files: Sequence[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {_FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"data_files must all be one of {', '.join(_FILE_BUILDERS)} (got {', '.join(sorted(suffixes))}); "
            "for a folder of images use --train_data_dir."
        )
    return builders.pop()


def looks_like_path(spec: str) -> bool:
    """Anything that is not a Hub id (`hub.is_hub_id`: ``name`` or ``owner/name``) is meant as a local path."""
    from .hub import is_hub_id

    return not is_hub_id(spec)


def open_dataset(
    spec: str, split: str = "train", cache_dir: str | None = None, config_name: str | None = None
):
    """One split of the dataset ``spec`` names, as a `datasets.Dataset` with its original columns.

    ``spec``: a parquet/csv/json/arrow file, a folder (``save_to_disk`` output, parquet files or an
    ``imagefolder``) or a Hub id. The one place that turns a dataset name into data, for training and
    for evaluation references alike.
    """
    import datasets

    path = Path(spec).expanduser()
    if path.is_file():
        return _load_split(
            spec,
            split,
            _builder_for_files([str(path)]),
            data_files={split: [str(path)]},
            split=split,
            cache_dir=cache_dir,
        )
    if path.is_dir():
        if (
            (path / "dataset_info.json").is_file()
            or (path / "state.json").is_file()
            or (path / "dataset_dict.json").is_file()
        ):
            dataset = datasets.load_from_disk(str(path))
            return dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        # A folder of data files or of images: `datasets` infers the builder (parquet, imagefolder, ...).
        return _load_split(spec, split, str(path), config_name, split=split, cache_dir=cache_dir)
    if looks_like_path(spec):
        raise FileNotFoundError(
            f"{spec} does not exist (and is not a Hub dataset id of the form owner/name); pass an existing "
            "file or folder, or a Hub dataset id."
        )
    return _load_split(spec, split, spec, config_name, split=split, cache_dir=cache_dir)


def _load_split(description: str, which: str, /, *args, **kwargs):
    """`datasets.load_dataset`, with a file that holds no rows said in one line that names it."""
    import datasets

    try:
        return datasets.load_dataset(*args, **kwargs)
    except ValueError as error:
        if "corresponds to no data" not in str(error):
            raise
        raise ValueError(
            f"{description} holds no rows (split {which!r} is empty); pass a dataset that holds images."
        ) from None


def as_image_column(dataset, column: str, description: str = "the dataset"):
    """``dataset`` with ``column`` typed as `datasets.Image`, so its rows decode to PIL images.

    A parquet file written by plain pyarrow (or pandas) carries no Hugging Face feature metadata: its
    encoded images read as raw bytes, a ``{"bytes", "path"}`` struct or path strings, which no transform
    can use. Those are cast to `datasets.Image`; image arrays stay as they are; anything else is an error
    naming the column.
    """
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset
    if isinstance(feature, (datasets.Array2D, datasets.Array3D)) or _is_list_feature(feature):
        return dataset  # pixel arrays, decoded by `image_decoding.decode_image`
    if isinstance(feature, dict) and "bytes" in feature:
        castable = True
    elif isinstance(feature, datasets.Value):
        castable = feature.dtype in ("binary", "large_binary", "string", "large_string")
    else:
        castable = False
    if not castable:
        raise ValueError(
            f"Column {column!r} of {description} holds {feature} values, not images; pass --image_column "
            "naming the column of encoded images (PNG/JPEG bytes or paths) or pixel arrays."
        )
    return dataset.cast_column(column, datasets.Image())


def _is_list_feature(feature) -> bool:
    import datasets

    return isinstance(feature, (list, datasets.List, datasets.LargeList))


def find_column(
    column_names: Sequence[str], given: str | None, candidates: Sequence[str], what: str
) -> str | None:
    """The column to use: the one given (checked), else the first known name present, else None."""
    if given is not None:
        if given not in column_names:
            raise ValueError(
                f"The dataset has no {what} column {given!r}; its columns are {', '.join(column_names)}. "
                f"Pass --{what}_column with one of them."
            )
        return given
    return next((c for c in candidates if c in column_names), None)


def _open_source(
    dataset_name: str | None,
    train_data_dir: str | None,
    data_files: list[str] | None,
    *,
    split: str,
    cache_dir: str | None,
    dataset_config_name: str | None,
    builtin_num_images: int,
    builtin_resolution: int,
):
    """The split of the first source given (`load_image_dataset`'s order), as loaded; one clear error for a
    missing file or folder, or no source at all."""
    if dataset_name == BUILTIN_SHAPES:
        dataset = _shapes_dataset(builtin_num_images, builtin_resolution)
    elif dataset_name is not None:
        dataset = open_dataset(
            dataset_name, split=split, cache_dir=cache_dir, config_name=dataset_config_name
        )
    elif data_files:
        missing = [f for f in data_files if not any(ch in f for ch in "*?[") and not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(f"--data_files not found: {', '.join(missing)}; pass existing files.")
        dataset = _load_split(
            ", ".join(data_files),
            split,
            _builder_for_files(data_files),
            data_files={split: list(data_files)},
            split=split,
            cache_dir=cache_dir,
        )
    elif train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise FileNotFoundError(
                f"--train_data_dir {train_data_dir!r} is not a directory; pass a folder of images."
            )
        dataset = _load_split(
            train_data_dir, split, "imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir
        )
    else:
        raise ValueError(
            "No training data given: pass --dataset_name (a Hub id, a parquet file or redistill:shapes), "
            "--data_files or --train_data_dir."
        )
    return dataset


def load_image_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | None = None,
    data_files: str | Sequence[str] | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    max_samples: int | None = None,
    dataset_config_name: str | None = None,
    require_labels: bool = False,
    builtin_num_images: int = 2048,
    builtin_resolution: int = 32,
    seed: int = 0,
):
    """Load one split as a `datasets.Dataset` with columns ``image`` (PIL) and, if found, ``label``.

    Sources, checked in this order: ``dataset_name`` (anything `open_dataset` reads, or
    ``"redistill:shapes"``), ``data_files`` (files of one format),
    ``train_data_dir`` (an ``imagefolder``). The image column is ``image_column`` or the first of
    ``image``/``img``/...; the label column likewise (optional unless ``require_labels``).
    ``max_samples`` keeps a random subset drawn with ``seed`` (`select_subset`).
    Raises one clear error for a missing source, an empty split or a missing image column.
    """

    if isinstance(data_files, str):
        data_files = [data_files]
    dataset = _open_source(
        dataset_name,
        train_data_dir,
        data_files,
        split=split,
        cache_dir=cache_dir,
        dataset_config_name=dataset_config_name,
        builtin_num_images=builtin_num_images,
        builtin_resolution=builtin_resolution,
    )
    source = _source_of(dataset_name, data_files, train_data_dir)
    image_col = find_column(dataset.column_names, image_column, IMAGE_COLUMN_CANDIDATES, "image")
    if image_col is None:
        raise ValueError(
            f"{source} has no image column among {', '.join(dataset.column_names)}; pass --image_column "
            "with the one holding the images."
        )
    label_col = find_column(dataset.column_names, label_column, LABEL_COLUMN_CANDIDATES, "label")
    if require_labels and label_col is None:
        raise ValueError(
            f"{source} has no label column among {', '.join(dataset.column_names)}; pass --label_column "
            "with the one holding the class indices."
        )
    keep = [image_col] + ([label_col] if label_col else [])
    dataset = as_image_column(dataset.select_columns(keep), image_col, source)
    if image_col != "image":
        dataset = dataset.rename_column(image_col, "image")
    if label_col and label_col != "label":
        dataset = dataset.rename_column(label_col, "label")
    if max_samples is not None:
        dataset = select_subset(dataset, max_samples, seed)
    dataset = drop_unreadable_images(dataset)
    if len(dataset) == 0:
        raise ValueError(f"{source} holds no readable images; pass a dataset that holds images.")
    return dataset


def _source_of(dataset_name, data_files, train_data_dir) -> str:
    return dataset_name or (", ".join(data_files) if data_files else None) or train_data_dir or "the dataset"


def select_subset(dataset, max_samples: int | None, seed: int):
    """``max_samples`` rows drawn at random with ``seed`` (diffusers' ``shuffle(seed).select``).

    Taking the first rows instead would train on a few classes of a file sorted by label. The
    subset depends only on the data and the seed. When the data has labels, the classes it covers
    are logged, with a warning when one class holds more than twice its share.
    """
    if max_samples is None:
        return dataset
    if max_samples < 1:
        raise ValueError(
            f"--max_train_samples must be at least 1, got {max_samples}; leave it out to use every image."
        )
    if max_samples >= len(dataset):
        if max_samples > len(dataset):
            logger.warning(
                "--max_train_samples %d is more than the %d images there are: training on all %d.",
                max_samples,
                len(dataset),
                len(dataset),
            )
        return dataset
    subset = dataset.shuffle(seed=seed).select(range(int(max_samples)))
    if "label" in subset.column_names and len(subset):
        log_class_balance(subset, num_classes=_label_count(dataset))
    return subset


def _unreadable(value: dict) -> str | None:
    """Why an undecoded image (``{"bytes", "path"}``) cannot be opened, or None."""
    import io

    try:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            image.verify()  # headers and PNG chunk checksums; no pixel decoding
    except Exception as error:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return " ".join(str(error).split()) or type(error).__name__
    return None


def drop_unreadable_images(dataset):
    """Skip images PIL cannot open (corrupt or truncated files), with one warning naming them and a count.

    Checked before training (PIL's ``verify``: cheaper than an epoch of decoding), so a bad file
    does not stop a run midway; damage only a full decode can find is still reported with the
    file's name by `ImageTensorDataset`.
    """
    import datasets

    if not isinstance(dataset.features.get("image"), datasets.Image):
        return dataset  # arrays or tensors, nothing to open
    raw = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    bad: list[tuple[int, str]] = []
    start = 0
    for batch in raw.iter(batch_size=1000):
        for offset, value in enumerate(batch["image"]):
            problem = _unreadable(value)
            if problem is not None:
                bad.append((start + offset, f"{value.get('path') or f'row {start + offset}'} ({problem})"))
        start += len(batch["image"])
    if not bad:
        return dataset
    shown = "; ".join(text for _, text in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    logger.warning("Skipping %d of %d images that cannot be read: %s", len(bad), len(dataset), shown)
    skip = {index for index, _ in bad}
    return dataset.select([i for i in range(len(dataset)) if i not in skip])


def _label_count(dataset) -> int:
    names = getattr(dataset.features.get("label"), "names", None)
    return len(names) if names else len(set(dataset["label"]))


def log_class_balance(dataset, num_classes: int) -> None:
    """Log how many of ``num_classes`` classes ``dataset`` covers; warn when one is over-represented."""
    from collections import Counter

    counts = Counter(dataset["label"])
    share = len(dataset) / max(1, num_classes)
    label, most = counts.most_common(1)[0]
    logger.info(
        "Training subset: %d images covering %d of %d classes.", len(dataset), len(counts), num_classes
    )
    if num_classes > 1 and most > 2 * share:
        logger.warning(
            "Training subset is unbalanced: class %s holds %d of %d images (more than twice its share of %.0f).",
            label,
            most,
            len(dataset),
            share,
        )


# ---------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------
def build_image_transform(resolution: int, channels: int = 3, center_crop: bool = True):
    """PIL image -> float tensor (channels, resolution, resolution) in [-1, 1].

    Resize the short side, then crop (centre, or random when ``center_crop`` is False, as in
    diffusers' training scripts), convert to grayscale or RGB to match the model's in_channels.
    Random flips are left to the task, which draws them from its checkpointed generator. Every
    image goes through `image_decoding.decode_image` (16-bit, palette, alpha, CMYK, EXIF orientation).
    """
    from torchvision import transforms

    from .image_decoding import decode_image

    if channels not in (1, 3):
        raise ValueError(f"Images can be converted to 1 or 3 channels, not {channels}.")
    mode = "L" if channels == 1 else "RGB"
    pipeline = transforms.Compose(
        [
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution) if center_crop else transforms.RandomCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )

    def transform(image) -> torch.Tensor:
        return pipeline(decode_image(image, mode))

    return transform


class ImageTensorDataset(torch.utils.data.Dataset):
    """Wrap a `datasets.Dataset` from `load_image_dataset`: item -> {"images": tensor[, "labels": int]}.

    The training side's dataset; images already in memory as a uint8 tensor (samples to score) are
    `redistill_diffusion.evaluation.reference.UInt8ImageDataset`.
    """

    def __init__(self, dataset, transform, with_labels: bool = False):
        if with_labels and "label" not in dataset.column_names:
            raise ValueError("The dataset has no label column; pass --label_column.")
        self.dataset = dataset
        self.transform = transform
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            row = self.dataset[int(index)]
            item = {"images": self.transform(row["image"])}
        except (OSError, SyntaxError) as error:  # damage `drop_unreadable_images` could not see
            raise ValueError(
                f"Image {self._describe(index)} cannot be decoded ({error}); remove it."
            ) from error
        if self.with_labels:
            item["labels"] = int(row["label"])
        return item

    def _describe(self, index: int) -> str:
        import datasets

        try:
            raw = self.dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
            return f"{int(index)} ({raw[int(index)]['image'].get('path') or 'embedded bytes'})"
        except Exception:  # noqa: BLE001 - only used to word an error
            return str(int(index))
