"""Features of an image set on disk, computed in chunks that survive a kill, then handed to torch-fidelity's
own cache.

Inception on a 2-core CPU does a few images per second, so a 10k-image reference takes tens of minutes.
Each finished chunk is saved atomically under ``<cache_root>/<cache name>-<extractor>-chunks/``; a rerun
skips the chunks it finds. When all are done they are joined into exactly the files torch-fidelity looks
up (``<name>-<extractor>-features-<layer>.pt`` and ``-stat-fid-<layer>.pt``), so its metric code then
runs unchanged and never recomputes them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torch_fidelity.metric_fid import fid_features_to_statistics
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor
from torch_fidelity.utils_torch import torch_atomic_save
from tqdm.auto import tqdm

from .extractors import FeatureExtractorChoice

DEFAULT_CHUNK_SIZE = 500


def metric_layers(extractor: FeatureExtractorChoice, metrics: Sequence[str]) -> list[str]:
    """The feature layers torch-fidelity asks of every input in a call with ``metrics``."""
    extractor_class = FEATURE_EXTRACTORS_REGISTRY[extractor.name]
    return sorted({extractor_class.get_default_feature_layer_for_metric(m) for m in metrics})


def features_file(cache_root: str, cache_name: str, extractor: FeatureExtractorChoice, layer: str) -> str:
    return os.path.join(cache_root, f"{cache_name}-{extractor.name}-features-{layer}.pt")


def stat_file(cache_root: str, cache_name: str, extractor: FeatureExtractorChoice, layer: str) -> str:
    return os.path.join(cache_root, f"{cache_name}-{extractor.name}-stat-fid-{layer}.pt")


def chunk_folder(cache_root: str, cache_name: str, extractor: FeatureExtractorChoice) -> Path:
    return Path(cache_root) / f"{cache_name}-{extractor.name}-chunks"


def cache_complete(
    cache_root: str, cache_name: str, extractor: FeatureExtractorChoice, metrics: Sequence[str]
) -> bool:
    """Whether torch-fidelity will find everything it needs for this set in the cache."""
    layers = metric_layers(extractor, metrics)
    if set(metrics) == {"fid"}:  # torch-fidelity's FID-only shortcut reads the statistics alone
        return all(os.path.exists(stat_file(cache_root, cache_name, extractor, layer)) for layer in layers)
    return all(os.path.exists(features_file(cache_root, cache_name, extractor, layer)) for layer in layers)


def _chunk_path(folder: Path, start: int, stop: int) -> Path:
    return folder / f"chunk-{start:08d}-{stop:08d}.pt"


def cache_features(
    images: Dataset,
    cache_name: str,
    extractor: FeatureExtractorChoice,
    metrics: Sequence[str],
    *,
    cache_root: str,
    batch_size: int = 64,
    device: torch.device | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    description: str = "features",
) -> bool:
    """Fill torch-fidelity's cache with the features (and FID statistics) of ``images``; True if it was
    already complete. Resumable: chunks finished by an interrupted call are loaded, not recomputed."""
    if cache_complete(cache_root, cache_name, extractor, metrics):
        return True
    layers = metric_layers(extractor, metrics)
    os.makedirs(cache_root, exist_ok=True)
    folder = chunk_folder(cache_root, cache_name, extractor)
    folder.mkdir(exist_ok=True)
    device = device or torch.device("cpu")
    total = len(images)
    bounds = [(start, min(start + chunk_size, total)) for start in range(0, total, chunk_size)]
    done = {b for b in bounds if _chunk_path(folder, *b).exists()}
    network = None
    with tqdm(
        total=total,
        initial=sum(stop - start for start, stop in done),
        desc=f"{description} ({len(done)}/{len(bounds)} chunks cached)" if done else description,
        unit="img",
        disable=not progress,
    ) as bar:
        for start, stop in bounds:
            if (start, stop) in done:
                continue
            if network is None:
                network = create_feature_extractor(
                    extractor.name,
                    layers,
                    cuda=device.type == "cuda",
                    feature_extractor_weights_path=extractor.weights_path,
                    verbose=False,
                )
            chunk = {layer: [] for layer in layers}
            loader = DataLoader(Subset(images, range(start, stop)), batch_size=batch_size, num_workers=0)
            with torch.no_grad():
                for batch in loader:
                    outputs = network(batch.to(device))
                    for layer, value in network.convert_features_tuple_to_dict(outputs).items():
                        chunk[layer].append(value.detach().cpu())
                    bar.update(batch.shape[0])
            torch_atomic_save(
                {k: torch.cat(v) for k, v in chunk.items()}, str(_chunk_path(folder, start, stop))
            )
    _join_chunks(folder, bounds, layers, cache_root, cache_name, extractor, fid="fid" in metrics)
    shutil.rmtree(folder, ignore_errors=True)
    return False


def _join_chunks(folder, bounds, layers, cache_root, cache_name, extractor, fid: bool) -> None:
    chunks = [torch.load(_chunk_path(folder, *b), map_location="cpu", weights_only=True) for b in bounds]
    for layer in layers:
        features = torch.cat([chunk[layer] for chunk in chunks])
        torch_atomic_save(features, features_file(cache_root, cache_name, extractor, layer))
        if fid:
            stats = fid_features_to_statistics(features)
            torch_atomic_save(stats, stat_file(cache_root, cache_name, extractor, layer))


def cached_fid_statistics(cache_root: str, cache_name: str, extractor: FeatureExtractorChoice) -> dict:
    """The FID statistics (``mu``, ``sigma``) of a set whose cache is complete."""
    layer = metric_layers(extractor, ["fid"])[0]
    path = stat_file(cache_root, cache_name, extractor, layer)
    if not os.path.exists(path):
        features = torch.load(features_file(cache_root, cache_name, extractor, layer), weights_only=True)
        torch_atomic_save(fid_features_to_statistics(features), path)
    return torch.load(path, map_location="cpu", weights_only=False)  # numpy arrays, written by us
