"""`export_model`: a saved teacher or student folder -> checked ONNX / ExecuTorch files + a report (+ its card).

Everything that can be checked is checked before any export (the folder, the formats, the extras, the
output folder), so bad input is one line and nothing is written; each file is checked against eager
PyTorch before it is kept (`export.export_file`), and a denoiser with a scheduler is also sampled with
diffusers' DDIM and DDPM pipelines through the exported file and through the eager UNet, same seed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .export import FILE_NAMES, TOLERANCE_TEXT, export_file
from .extras import BACKENDS, FORMATS, require
from .sources import classify_folder, load_deployable

REPORT_NAME = "export_report.json"
DEPLOY_BEGIN, DEPLOY_END = "<!-- redistill-deploy -->", "<!-- /redistill-deploy -->"
SAMPLING_CHECKS = (("ddim", 10), ("ddpm", 10))


def check_export_request(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    formats: tuple[str, ...],
    *,
    batch_size: int,
    backend: str,
    overwrite: bool,
    update_card: bool,
) -> str:
    """Every check that needs no model; returns the folder's kind. Raises one-line ValueErrors."""
    if not formats:
        raise ValueError(f"give at least one --format ({', '.join(FORMATS)}).")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"--format must be among {', '.join(FORMATS)}, got {fmt!r}.")
    if batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {batch_size}.")
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    kind = classify_folder(folder)
    for fmt in formats:
        require(fmt, f"--format {fmt}")
    if update_card:
        from ..model_cards import check_card_folder

        check_card_folder(folder)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file; pass a folder.")
    existing = [FILE_NAMES[f] for f in formats if (out / FILE_NAMES[f]).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"--output_dir {output_dir} already holds {', '.join(existing)}; pass --overwrite to replace "
            "them (only the exported files and export_report.json are replaced) or another --output_dir."
        )
    return kind


def export_model(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    formats: tuple[str, ...] = FORMATS,
    *,
    batch_size: int = 1,
    backend: str = "xnnpack",
    overwrite: bool = False,
    check_sampling: bool = True,
    update_card: bool = False,
    progress=print,
) -> dict[str, Any]:
    """Export a saved pipeline / UNet / classifier folder to ``formats`` in ``output_dir`` (default
    ``<folder>/deploy``) and return the report also written to ``output_dir/export_report.json``."""
    from ..files import ensure_output_dir

    output_dir = Path(output_dir) if output_dir is not None else Path(folder) / "deploy"
    formats = tuple(formats)
    kind = check_export_request(
        folder,
        output_dir,
        formats,
        batch_size=batch_size,
        backend=backend,
        overwrite=overwrite,
        update_card=update_card,
    )
    ensure_output_dir(output_dir)
    deployable = load_deployable(folder)
    report: dict[str, Any] = {
        "source": str(folder),
        "kind": kind,
        "model": deployable.info.get("model"),
        "input_shape": deployable.info.get("input_shape"),
        "tolerance": TOLERANCE_TEXT,
        "files": [],
    }
    for fmt in formats:
        progress(f"exporting {folder} to {fmt} ...")
        exported = export_file(deployable, fmt, output_dir, batch_size=batch_size, backend=backend)
        entry = exported.to_dict()
        entry["path"] = Path(exported.path).name
        if kind == "denoiser" and check_sampling and deployable.scheduler is not None:
            entry["sampling"] = _check_sampling(deployable, exported, batch_size, progress)
        report["files"].append(entry)
        progress(
            f"wrote {exported.path}: max |{exported.runtime} - eager| = {exported.max_abs_error:.2e} "
            f"(largest output {exported.max_abs_reference:.3g})"
        )
    path = output_dir / REPORT_NAME
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
    if update_card:
        update_card_deploy_section(folder, report)
    return report


def _check_sampling(deployable, exported, batch_size: int, progress) -> list[dict[str, Any]]:
    from .sampling import compare_sampling

    samples = batch_size if exported.format == "executorch" else 2  # a .pte runs its exported batch only
    checks = []
    for sampler, steps in SAMPLING_CHECKS:
        progress(f"sampling {samples} images, {sampler} {steps} steps, eager vs {exported.runtime} ...")
        checks.append(
            compare_sampling(
                deployable.module.unet,
                deployable.scheduler,
                exported.path,
                sampler=sampler,
                num_inference_steps=steps,
                num_samples=samples,
            )
        )
    return checks


def deploy_markdown(report: dict[str, Any]) -> str:
    """The card's Deployment section: which runtimes the files were checked in, with the figures."""
    lines = [
        DEPLOY_BEGIN,
        "## Deployment (`redistill export`)",
        "",
        f"Checked against eager PyTorch on fixed inputs ({report['tolerance']}):",
        "",
        "| file | runtime | checked at batch | max abs error | planned activations | sampling (same seed) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in report["files"]:
        runtime = entry["runtime"] + (f" ({entry['backend']})" if entry.get("backend") else "")
        planned = "-" if entry.get("planned_bytes") is None else f"{entry['planned_bytes'] / 1024**2:.3f} MB"
        sampling = "; ".join(
            f"{c['sampler']} {c['steps']} steps: max {c['max_uint8_difference']} uint8 levels"
            for c in entry.get("sampling") or []
        )
        lines.append(
            f"| `{entry['path']}` | {runtime} | {', '.join(map(str, entry['batch_sizes']))} | "
            f"{entry['max_abs_error']:.2e} | {planned} | {sampling or '-'} |"
        )
    lines += [
        "",
        "Memory in each runtime, teacher vs student: docs/deploy.md of redistill-diffusion.",
        DEPLOY_END,
    ]
    return "\n".join(lines)


def update_card_deploy_section(folder: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write (or replace) the Deployment section of the folder's README.md."""
    from ..model_cards import check_card_folder

    path = check_card_folder(folder) / "README.md"
    text = path.read_text(encoding="utf-8")
    section = deploy_markdown(report)
    if DEPLOY_BEGIN in text and DEPLOY_END in text:
        start, end = text.index(DEPLOY_BEGIN), text.index(DEPLOY_END) + len(DEPLOY_END)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


__all__ = [
    "REPORT_NAME",
    "check_export_request",
    "deploy_markdown",
    "export_model",
    "update_card_deploy_section",
]
