"""Reference image sets for FID / IS / KID: every source becomes a torch Dataset of uint8 3xHxW tensors.

Generated samples and reference images take the same path into torch-fidelity, with no lossy
re-encoding in between. Each reference carries an ``identity`` string (source, file stamp, size,
resolution) that keys its cached statistics.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from ..image_decoding import decode_image

# Fixed, so a capped reference always draws the same images and its cache entry stays valid.
REFERENCE_SUBSET_SEED = 0


class UInt8ImageDataset(Dataset):
    """In-memory uint8 images (N x 3 x H x W), e.g. fresh samples, served one tensor at a time as
    torch-fidelity expects. (Training data, decoded and transformed from a `datasets.Dataset`, is
    `redistill_diffusion.data.ImageTensorDataset`.)"""

    def __init__(self, images: torch.Tensor):
        if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return image.expand(3, -1, -1).contiguous() if image.shape[0] == 1 else image


def to_rgb_uint8(image, resolution: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image, array or tensor -> uint8 3xHxW tensor; grayscale gets 3 channels; resize + center crop
    to ``resolution`` (H, W) when the size differs, as torch-fidelity's ``samples_resize_and_crop`` does.
    Images are decoded as for training (`image_decoding.decode_image`: 16-bit scaled, alpha flattened)."""
    if isinstance(image, torch.Tensor):
        tensor = image
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(0)
        if tensor.dtype != torch.uint8:
            raise ValueError(f"reference tensors must be uint8, got {tensor.dtype}")
    else:
        tensor = TF.pil_to_tensor(decode_image(image, "RGB"))
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels (C x H x W), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    elif tensor.shape[0] == 4:
        tensor = tensor[:3]
    if resolution is not None and tuple(tensor.shape[-2:]) != tuple(resolution):
        tensor = TF.resize(tensor, min(resolution), antialias=True)
        tensor = TF.center_crop(tensor, list(resolution))
    return tensor.contiguous()


class ReferenceImages(Dataset):
    """A reference set: any indexable source of images, optionally capped and resized.

    ``identity`` names the source, its file stamp, the number of images and the resolution; two
    references with the same identity give the same features, so it is the cache key.
    """

    def __init__(
        self,
        source,
        *,
        description: str,
        source_identity: str,
        image_column: str | None = None,
        indices: Sequence[int] | None = None,
        resolution: tuple[int, int] | None = None,
    ):
        self.source = source
        self.description = description
        self.source_identity = source_identity
        self.image_column = image_column
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.resolution = None if resolution is None else (int(resolution[0]), int(resolution[1]))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.source[self.indices[index]]
        if self.image_column is not None:
            item = item[self.image_column]
        return to_rgb_uint8(item, self.resolution)

    @property
    def native_resolution(self) -> tuple[int, int]:
        item = self.source[self.indices[0]]
        if self.image_column is not None:
            item = item[self.image_column]
        return tuple(to_rgb_uint8(item).shape[-2:])

    @property
    def identity(self) -> str:
        resolution = "native" if self.resolution is None else f"{self.resolution[0]}x{self.resolution[1]}"
        return f"{self.source_identity}|n={len(self)}|resolution={resolution}"

    def at_resolution(self, resolution: tuple[int, int] | None) -> ReferenceImages:
        """The same images resized to ``resolution`` (H, W): the extractor sees samples and reference alike."""
        return ReferenceImages(
            self.source,
            description=self.description,
            source_identity=self.source_identity,
            image_column=self.image_column,
            indices=self.indices,
            resolution=resolution,
        )


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _detect_image_column(dataset, description: str) -> str:
    import datasets

    from ..data import IMAGE_COLUMN_CANDIDATES

    for name in IMAGE_COLUMN_CANDIDATES:
        if name in dataset.column_names:
            return name
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(
        f"reference {description} has no image column (looked for {', '.join(IMAGE_COLUMN_CANDIDATES)} "
        f"or an Image feature; columns: {', '.join(dataset.column_names)})"
    )


def _load_hf_dataset(spec: str, split: str):
    """A dataset source (see `redistill_diffusion.data.open_dataset`) and the identity that keys its cached
    statistics: files are stamped by size and modification time, everything else by its fingerprint."""
    from ..data import open_dataset

    path = Path(spec).expanduser()
    if path.is_file() and path.suffix != ".parquet":
        raise ValueError(
            f"reference file {spec} is not a .parquet file (pass a parquet file or an image folder)"
        )
    dataset = open_dataset(spec, split=split)
    if path.is_file():
        return dataset, f"parquet:{_file_stamp(path)}"
    if path.is_dir():
        parquet_files = sorted(path.glob("*.parquet"))
        if parquet_files:
            return dataset, "parquet:" + ";".join(_file_stamp(file) for file in parquet_files)
        return dataset, f"folder:{path.resolve()}:{split}:{dataset._fingerprint}"
    return dataset, f"hub:{spec}:{split}:{dataset._fingerprint}"


def _tensor_identity(images: torch.Tensor) -> str:
    digest = hashlib.sha1(images.contiguous().numpy().tobytes()).hexdigest()[:16]
    return f"tensor:{tuple(images.shape)}:{digest}"


def load_reference(
    reference: str | os.PathLike | torch.Tensor | Dataset | ReferenceImages,
    *,
    split: str = "train",
    max_images: int | None = None,
    resolution: tuple[int, int] | None = None,
    datasets_root: str | None = None,
) -> ReferenceImages:
    """Open a reference set and read its first image, so a bad reference fails before any sampling.

    ``reference`` is a torch-fidelity registered name (``cifar10-train``), a parquet file or folder of
    parquet files, an image folder, a ``save_to_disk`` folder, a Hub dataset name, a uint8 tensor
    (N x C x H x W) or a Dataset returning images. ``max_images`` keeps a fixed random subset.
    """
    if isinstance(reference, ReferenceImages):
        result = reference
    elif isinstance(reference, torch.Tensor):
        result = ReferenceImages(
            UInt8ImageDataset(reference), description="tensor", source_identity=_tensor_identity(reference)
        )
    elif isinstance(reference, Dataset):
        name = type(reference).__name__
        result = ReferenceImages(
            reference, description=name, source_identity=f"dataset:{name}:{id(reference)}"
        )
    else:
        spec = str(reference)
        result = _open_named_reference(spec, split=split, datasets_root=datasets_root)

    if len(result) == 0:
        raise ValueError(f"reference {result.description} holds no images")
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"reference_max_images must be positive, got {max_images}")
        if max_images < len(result):
            rng = np.random.default_rng(REFERENCE_SUBSET_SEED)
            chosen = np.sort(rng.choice(len(result), size=max_images, replace=False))
            result = ReferenceImages(
                result.source,
                description=result.description,
                source_identity=result.source_identity,
                image_column=result.image_column,
                indices=[result.indices[i] for i in chosen],
                resolution=result.resolution,
            )
    if resolution is not None:
        result = result.at_resolution(resolution)
    try:
        result[0]
    except Exception as error:
        raise ValueError(f"reference {result.description} is unreadable: {_first_line(error)}") from error
    return result


def _open_named_reference(spec: str, *, split: str, datasets_root: str | None) -> ReferenceImages:
    from torch_fidelity.registry import DATASETS_REGISTRY

    if spec in DATASETS_REGISTRY:
        root = datasets_root or os.path.join(torch.hub.get_dir(), "fidelity_datasets")
        os.makedirs(root, exist_ok=True)
        try:
            dataset = DATASETS_REGISTRY[spec](root, True)
        except Exception as error:
            raise ValueError(
                f"torch-fidelity dataset {spec} could not be prepared in {root} ({_first_line(error)}); "
                "offline, pass a local parquet file or image folder instead"
            ) from error
        return ReferenceImages(dataset, description=spec, source_identity=f"torch-fidelity:{spec}")
    try:
        dataset, identity = _load_hf_dataset(spec, split)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"reference {_first_line(error)}") from error
    except Exception as error:
        message = _first_line(error)
        if not message.startswith("reference "):
            message = f"reference {spec} could not be read: {message}"
        raise ValueError(message) from error
    from ..data import as_image_column

    column = _detect_image_column(dataset, spec)
    # Rows then decode the image only; a plain pyarrow parquet's bytes become images.
    dataset = as_image_column(dataset.select_columns([column]), column, f"reference {spec}")
    return ReferenceImages(dataset, description=spec, source_identity=identity, image_column=column)
