"""What people read after an evaluation: metrics.json, a markdown table and one sample grid per pipeline."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from .extractors import FeatureExtractorChoice

BYTES_PER_MB = 1024**2  # the paper's MB (docs/memory.md)
GRID_PADDING = 2  # pixels between (and around) the images of a sample grid


def save_sample_grid(
    images: torch.Tensor | Sequence, path: str | Path, max_images: int | None = 64, columns: int | None = None
) -> Path:
    """The package's one grid writer: the first ``max_images`` images (a uint8 N x 3 x H x W tensor or PIL
    images of one size) in a square-ish PNG grid (torchvision's ``make_grid``, 2 px white padding)."""
    if not isinstance(images, torch.Tensor):
        images = [torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1) for image in images]
        if not images:
            raise ValueError("No images to put in a grid.")
        images = torch.stack(images)
    images = images[:max_images] if max_images else images
    if images.shape[0] == 0:
        raise ValueError("No images to put in a grid.")
    columns = columns or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images, nrow=columns, padding=GRID_PADDING, pad_value=255)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    return path


def load_sample_grid(path: str | Path, image_size: int) -> torch.Tensor:
    """The images of a grid written by `save_sample_grid` (square images of ``image_size`` pixels), as a
    uint8 N x 3 x H x W tensor; blank cells of a last, partly filled row come back too."""
    grid = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    step = image_size + GRID_PADDING
    rows, columns = (grid.shape[1] - GRID_PADDING) // step, (grid.shape[2] - GRID_PADDING) // step
    if (
        rows < 1
        or columns < 1
        or (grid.shape[1] - GRID_PADDING) % step
        or (grid.shape[2] - GRID_PADDING) % step
    ):
        raise ValueError(
            f"{path} is not a grid of {image_size}-pixel images with {GRID_PADDING}-pixel padding."
        )
    return torch.stack(
        [
            grid[:, GRID_PADDING + r * step : r * step + step, GRID_PADDING + c * step : c * step + step]
            for r in range(rows)
            for c in range(columns)
        ]
    )


def _mean_std(result: dict, mean_key: str, std_key: str, digits: int) -> str:
    if mean_key not in result:
        return "-"
    return f"{result[mean_key]:.{digits}f} ± {result.get(std_key, float('nan')):.{digits}f}"


def format_metrics_table(results: Sequence[dict], extractor: FeatureExtractorChoice) -> str:
    """One markdown row per pipeline: FID (or FD-<extractor>), IS, KID, samples, sampler, throughput,
    peak activation memory of the denoiser (MB = 2^20 bytes, batch 1). Rows of image sets (``images``
    instead of ``pipeline``) have the metric and image-count columns only."""
    pipelines = all("pipeline" in r for r in results)
    keys = extractor.metric_keys()
    titles = extractor.display_names()
    fid_key = keys["frechet_inception_distance"]
    isc_mean, isc_std = keys["inception_score_mean"], keys["inception_score_std"]
    kid_mean, kid_std = keys["kernel_inception_distance_mean"], keys["kernel_inception_distance_std"]
    has = {
        key: any(key in r for r in results)
        for key in (fid_key, isc_mean, kid_mean, "precision", "peak_bytes_paper", "denoise_loss")
    }

    header = ["Pipeline" if pipelines else "Images"]
    if has[fid_key]:
        header.append(f"{titles['fid']} ↓")
    if has[isc_mean]:
        header.append(f"{titles['isc']} ↑")
    if has[kid_mean]:
        header.append(f"{titles['kid']} ↓")
    if has["precision"]:
        header += ["Precision", "Recall"]
    if has["denoise_loss"]:
        header.append("Held-out denoising loss ↓ (low / mid / high noise)")
    header += (
        ["Samples", "Sampler", "Images/s", "Peak act. memory (MB)"] if pipelines else ["Number of images"]
    )
    if has["peak_bytes_paper"]:
        header.append("Peak, paper conv. (MB)")

    rows = []
    for r in results:
        row = [f"`{r['pipeline'] if pipelines else r.get('images', r.get('pipeline'))}`"]
        if has[fid_key]:
            row.append(f"{r[fid_key]:.2f}" if fid_key in r else "-")
        if has[isc_mean]:
            row.append(_mean_std(r, isc_mean, isc_std, 2))
        if has[kid_mean]:
            row.append(_mean_std(r, kid_mean, kid_std, 4))
        if has["precision"]:
            row += [
                f"{r['precision']:.3f}" if "precision" in r else "-",
                f"{r['recall']:.3f}" if "recall" in r else "-",
            ]
        if has["denoise_loss"]:
            bands = " / ".join(
                f"{r[f'denoise_loss_{b}']:.4f}" for b in ("low", "mid", "high") if f"denoise_loss_{b}" in r
            )
            row.append(f"{r['denoise_loss']:.5f} ({bands})" if "denoise_loss" in r else "-")
        if not pipelines:
            rows.append(row + [str(r["num_samples"])])
            continue
        row += [
            str(r["num_samples"]),
            f"{r['sampler'].upper()} {r['num_inference_steps']}",
            f"{r['images_per_second']:.2f}",
            f"{r['peak_bytes'] / BYTES_PER_MB:.3f}" if "peak_bytes" in r else "n/a",
        ]
        if has["peak_bytes_paper"]:
            row.append(f"{r['peak_bytes_paper'] / BYTES_PER_MB:.3f}" if "peak_bytes_paper" in r else "n/a")
        rows.append(row)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + _table_notes(results, extractor, pipelines)) + "\n"


def _table_notes(results: Sequence[dict], extractor: FeatureExtractorChoice, pipelines: bool) -> list[str]:
    """What the table's numbers are: the extractor (FD-<name> unless Inception), the reference, and for
    pipelines where throughput and memory were measured."""
    first = results[0] if results else {}
    notes = [
        "",
        f"Feature extractor: `{extractor.description}`"
        + (
            ""
            if extractor.is_inception
            else f" (a Frechet distance on its features: FD-{extractor.label}, not FID)"
        )
        + f". Reference: `{first.get('reference')}` ({first.get('reference_num_images', '-')} images).",
    ]
    if pipelines:
        notes.append(
            f"Throughput measured on `{first.get('device', '?')}`; peak memory: one denoiser forward at batch 1,"
            " weights excluded (`redistill_diffusion.memory`, exact liveness count)."
        )
    return notes


def write_report(results: Sequence[dict], extractor: FeatureExtractorChoice, output_dir: str | Path) -> None:
    """``metrics.json`` (``{"results": [...]}``) and ``metrics.md`` in ``output_dir``."""
    from ..interrupts import at_phase
    from ..redaction import redact_text
    from ..training.outputs import write_text_atomic

    output_dir = Path(output_dir)
    at_phase("eval_report")
    # Atomic: an interruption leaves the previous report or the new one, never half of one.
    write_text_atomic(
        output_dir / "metrics.json", redact_text(json.dumps({"results": list(results)}, indent=2) + "\n")
    )
    write_text_atomic(output_dir / "metrics.md", redact_text(format_metrics_table(results, extractor)))
