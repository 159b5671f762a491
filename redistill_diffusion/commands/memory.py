"""`redistill memory`: teacher vs ReDistill student peak activation memory, from a config alone.

    redistill memory google/ddpm-cifar10-32 --stem_stride 2 --convention both --json mem.json --plot mem.png
    redistill memory path/to/unet/config.json --stem_stride 4 --resolution 64
    redistill memory --timm resnet18 --resolution 224 --stem_stride 8

No weights are loaded: memory depends on the architecture only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..memory import MemorySummary

CONVENTION_CHOICES = ("exact", "paper", "both")
DEFAULT_UNET_STEM_STRIDE = 2
DEFAULT_TIMM_STEM_STRIDE = 8
DEFAULT_TIMM_RESOLUTION = 224
RUNTIME_CHOICES = ("executorch", "onnxruntime", "eager", "cuda")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "memory",
        help="teacher vs student peak activation memory (exact count and/or the paper's convention)",
        description=(
            "Measure the peak activation memory of one forward pass (no_grad, weights and inputs excluded) of a "
            "teacher and of its ReDistill student. MB = bytes / 1024^2. --convention both writes "
            '{"exact": {...}, "paper": {...}} to --json; a single convention writes the object itself.'
        ),
        allow_abbrev=False,
    )
    parser.add_argument(
        "teacher",
        nargs="?",
        help="UNet2DModel config: a config JSON, a model folder, a pipeline folder (with unet/) or a Hub id",
    )
    parser.add_argument("--timm", metavar="NAME", help="a timm classifier name instead of a UNet teacher")
    parser.add_argument(
        "--stem_stride",
        "--stem-stride",
        dest="stem_stride",
        type=int,
        default=None,
        help=f"student stem stride, a power of two (default {DEFAULT_UNET_STEM_STRIDE} for UNets, "
        f"{DEFAULT_TIMM_STEM_STRIDE} for timm models)",
    )
    parser.add_argument("--convention", choices=CONVENTION_CHOICES, default="exact", help="default: exact")
    parser.add_argument(
        "--resolution",
        type=int,
        default=None,
        help=f"input height = width (default: the UNet's sample_size, {DEFAULT_TIMM_RESOLUTION} for timm models)",
    )
    parser.add_argument(
        "--batch_size",
        "--batch-size",
        dest="batch_size",
        type=int,
        default=1,
        help="batch of the exact count (the paper convention is per sample); default 1",
    )
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="write the comparison as JSON here")
    parser.add_argument(
        "--plot", dest="plot_path", metavar="PATH", help="write the per-layer plot (PNG) here"
    )
    parser.add_argument(
        "--show_layers",
        "--show-layers",
        dest="show_layers",
        type=int,
        default=0,
        metavar="N",
        help="also print the N largest layers of each model (0: only the summary)",
    )
    _add_runtime_arguments(parser)
    parser.set_defaults(func=run)


def _add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--runtime and its settings: the same comparison in deployment runtimes (the [deploy] extra)."""
    parser.add_argument(
        "--runtime",
        nargs="+",
        choices=RUNTIME_CHOICES,
        default=None,
        help="also measure in these runtimes (needs the [deploy] extra): ExecuTorch's planned activations, "
        "the resident-memory rise of one forward in a fresh eager / onnxruntime process, CUDA's "
        "max_memory_allocated; see docs/deploy.md",
    )
    parser.add_argument(
        "--runtime_batches",
        "--runtime-batches",
        dest="runtime_batches",
        type=int,
        nargs="+",
        default=[1, 16],
        help="batch sizes of the --runtime figures (default 1 16)",
    )
    parser.add_argument(
        "--runtime_repeats",
        "--runtime-repeats",
        dest="runtime_repeats",
        type=int,
        default=3,
        help="fresh processes per resident-memory figure, median taken (default 3)",
    )


def _check_args(args: argparse.Namespace) -> None:
    if (args.teacher is None) == (args.timm is None):
        raise ValueError("give exactly one teacher: a UNet config/folder/Hub id, or --timm NAME.")
    if args.stem_stride is not None and (args.stem_stride < 1 or args.stem_stride & (args.stem_stride - 1)):
        raise ValueError(f"--stem_stride must be a power of two (1, 2, 4, 8, ...), got {args.stem_stride}.")
    if args.resolution is not None and args.resolution < 1:
        raise ValueError(f"--resolution must be a positive number of pixels, got {args.resolution}.")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}.")
    if args.plot_path and not args.plot_path.lower().endswith(".png"):
        raise ValueError(f"--plot writes a PNG; give a path ending in .png, got {args.plot_path}.")
    if args.runtime:
        from ..deploy.measure import check_runtimes

        check_runtimes(args.runtime, args.runtime_batches)
        if args.runtime_repeats < 1:
            raise ValueError(f"--runtime_repeats must be at least 1, got {args.runtime_repeats}.")
    from ..files import check_output_file

    for flag, path in (("--json", args.json_path), ("--plot", args.plot_path)):
        if path:
            check_output_file(path, flag)  # a folder that is a file: one line now, not after measuring


def _build_pair(args: argparse.Namespace):
    """(teacher, student, input_shape, description, stem stride); every check runs before a model is built."""
    from ..diffusion.configs import load_unet_config
    from ..diffusion.pairs import build_unet_pair, check_unet_student

    if args.timm is not None:
        from ..classification.memory_convention import build_timm_pair  # also registers the timm conventions

        stem_stride = args.stem_stride or DEFAULT_TIMM_STEM_STRIDE
        resolution = args.resolution or DEFAULT_TIMM_RESOLUTION
        teacher, student = build_timm_pair(args.timm, stem_stride)
        return (
            teacher,
            student,
            (3, resolution, resolution),
            f"timm {args.timm}, student stem stride {stem_stride}",
            stem_stride,
        )
    stem_stride = args.stem_stride or DEFAULT_UNET_STEM_STRIDE
    loaded = load_unet_config(args.teacher)
    resolution = check_unet_student(loaded.config, stem_stride, args.resolution)
    teacher, student = build_unet_pair(loaded.config, stem_stride)
    channels = int(loaded.config.get("in_channels", 3))
    return (
        teacher,
        student,
        (channels, resolution, resolution),
        (f"UNet2DModel from {loaded.source}, student stem stride {stem_stride}"),
        stem_stride,
    )


# Below this teacher/student peak ratio the stem cut is not worth a student (the input is too small).
MIN_USEFUL_RATIO = 1.1


def small_input_warning(
    teacher_bytes: int, student_bytes: int, resolution: str, stem_stride: int
) -> str | None:
    """One line when the student saves (almost) nothing: at a tiny input the teacher's own maps are already
    a few pixels, so a larger stem stride has nothing left to cut (resnet18 at 7 px: 1.01x)."""
    ratio = teacher_bytes / student_bytes if student_bytes else float("inf")
    if ratio >= MIN_USEFUL_RATIO:
        return None
    return (
        f"at input {resolution} the student with stem stride {stem_stride} saves only {ratio:.2f}x peak memory: "
        "the input is too small for the stem cut to matter; measure at the resolution you will run (--resolution)."
    )


def _print_peaks(summary: MemorySummary, show_layers: int) -> None:
    """Where each exact peak is and what was alive there; with --show_layers, each model's largest layers."""
    for comparison in summary:
        reports = (("teacher", comparison.teacher), ("student", comparison.student))
        for label, report in reports if comparison.teacher.alive_at_peak else ():
            largest = ", ".join(
                f"{'x'.join(map(str, r.shape))} ({r.op} in {r.module})" for r in report.alive_at_peak[:4]
            )
            print(f"{label} exact peak at {report.peak_op} in {report.peak_layer}; largest alive: {largest}")
        if show_layers:
            for report in (comparison.teacher, comparison.student):
                print()
                print(report.format(max_layers=show_layers))


def run(args: argparse.Namespace) -> int:
    from ..memory import MemorySummary, plot_memory_per_layer

    _check_args(args)
    teacher, student, input_shape, description, stem_stride = _build_pair(args)
    conventions = ("exact", "paper") if args.convention == "both" else (args.convention,)
    summary = MemorySummary.measure(
        teacher, student, input_shape, conventions=conventions, batch_size=args.batch_size, strict=True
    )

    resolution = "x".join(str(s) for s in input_shape[1:])
    print(
        f"{description}; input {resolution}, batch {args.batch_size} (paper convention: per sample); MB = bytes / 1024^2"
    )
    print(summary.format())
    first = summary[conventions[0]]
    warning = small_input_warning(first.teacher.peak_bytes, first.student.peak_bytes, resolution, stem_stride)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    _print_peaks(summary, args.show_layers)

    runtime_rows = None
    if args.runtime:
        from ..deploy.measure import format_runtime_rows, runtime_memory_of_pair

        runtime_rows = runtime_memory_of_pair(
            teacher, student, input_shape, args.runtime, args.runtime_batches, repeats=args.runtime_repeats
        )
        print(format_runtime_rows(runtime_rows))
    if args.json_path:
        # One convention: the comparison object itself; both: {"exact": {...}, "paper": {...}}.
        payload = summary.to_dict(include_layers=True)
        payload = payload[conventions[0]] if len(conventions) == 1 else payload
        if runtime_rows is not None:
            payload = {**payload, "runtimes": runtime_rows}
        path = Path(args.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
    if args.plot_path:
        name = args.timm or Path(str(args.teacher)).name
        written = plot_memory_per_layer(
            summary.pairs(), args.plot_path, title=f"Peak activation memory per layer: {name}"
        )
        print(f"wrote {written}")
    return 0
