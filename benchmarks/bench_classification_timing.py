"""Issue 27, item 6: step time and images/s of the classification benchmark's models, measured in one process.

    python benchmarks/bench_classification_timing.py                 # ~1-2 min at 1 thread; writes
                                                                     # benchmarks/results/classification_timing.json
    python benchmarks/bench_classification_timing.py --output_dir /tmp/t --repeats 2 --smoke

The accuracy runs of `bench_classification.py` share the CPU with other jobs, so their wall times say little.
Here every model is timed in the same process on the same inputs: a few warm-up steps each, then ``--repeats``
rounds that time ``--steps`` training steps (forward, cross-entropy, backward, SGD step; bf16 autocast as in
training) and as many inference batches of every model in turn (round-robin, so a burst of load from another
process hits every model alike); the figure is the median round. Ratios are to the teacher and to the plain
student. Models: the benchmark's teacher, its stem-stride-4 plain student and the RED student (the plain student
with the paper's RED blocks), and the distillation step (RED student step plus the frozen teacher's forward).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    check_timing_args,
    markdown_table,
    part_result,
    relative,
    round_robin_times,
    timing_parser,
    write_json,
)

RESULTS_NAME = "classification_timing.json"


def build_models(
    timm_model_args: dict[str, Any], stem_stride: int, red_norm: str = "batch"
) -> dict[str, Any]:
    """The teacher, the plain student and the RED student, as `bench_classification.py` trains them."""
    from redistill_diffusion.classification import create_student, create_teacher

    teacher = create_teacher(
        "resnet18", num_classes=10, cifar_stem=True, input_size=(3, 32, 32), **timm_model_args
    )
    plain = create_student(teacher, stem_stride=stem_stride, init="random", red_placement=None)
    red = create_student(
        teacher, stem_stride=stem_stride, init="random", red_placement="paper", red_norm=red_norm
    )
    return {"teacher": teacher, "plain student": plain, "RED student": red}


def _train_step(model, optimizer, images, labels, autocast, teacher=None) -> Callable[[], None]:
    import torch
    import torch.nn.functional as F

    def step() -> None:
        with autocast():
            if teacher is not None:
                with torch.no_grad():
                    teacher(images)
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _inference(model, images, autocast) -> Callable[[], None]:
    import torch

    def forward() -> None:
        with torch.no_grad(), autocast():
            model(images)

    return forward


def measure(
    models: dict[str, Any],
    batch_size: int = 128,
    steps: int = 3,
    repeats: int = 5,
    warmup: int = 2,
    mixed_precision: str = "bf16",
    distillation_pair: tuple[str, str] | None = ("RED student", "teacher"),
) -> list[dict[str, Any]]:
    """Median seconds per training step and per inference batch of every model, timed round-robin."""
    import contextlib

    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)
    if mixed_precision == "bf16":

        def autocast():
            return torch.autocast("cpu", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    jobs: dict[tuple[str, str], Callable[[], None]] = {}
    for name, model in models.items():
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        jobs[(name, "train")] = _train_step(model, optimizer, images, labels, autocast)
        jobs[(name, "inference")] = _inference(model, images, autocast)
    if distillation_pair is not None:
        student, teacher = (models[n] for n in distillation_pair)
        optimizer = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)
        name = f"{distillation_pair[0]} + frozen {distillation_pair[1]} forward"
        jobs[(name, "train")] = _train_step(student, optimizer, images, labels, autocast, teacher=teacher)
    times = round_robin_times(jobs, steps, repeats, warmup)
    rows = []
    for name in dict.fromkeys(key[0] for key in jobs):
        row: dict[str, Any] = {"model": name}
        if name in models:
            row["params"] = sum(p.numel() for p in models[name].parameters())
        for kind in ("train", "inference"):
            if (name, kind) in times:
                median = statistics.median(times[(name, kind)])
                row[f"{kind}_s_per_batch"] = median
                row[f"{kind}_images_per_s"] = batch_size / median
                row[f"{kind}_s_per_batch_all"] = times[(name, kind)]
        rows.append(row)
    for reference in ("teacher", "plain student"):
        base = next((r for r in rows if r["model"] == reference), None)
        for row in rows:
            for kind in ("train", "inference"):
                if base and row.get(f"{kind}_s_per_batch") and base.get(f"{kind}_s_per_batch"):
                    key = f"{kind}_time_vs_{reference.split()[0]}"
                    row[key] = row[f"{kind}_s_per_batch"] / base[f"{kind}_s_per_batch"]
    return rows


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    header = [
        "model",
        "params",
        "train s / step (median)",
        "train images/s",
        "vs teacher",
        "vs plain student",
        "inference images/s",
        "inference vs teacher",
    ]

    def ratio(value):
        return "-" if value is None else f"{value:.2f}x"

    table = [
        [
            r["model"],
            f"{r['params'] / 1e6:.3f} M" if r.get("params") else "-",
            round(r["train_s_per_batch"], 4),
            round(r["train_images_per_s"], 1),
            ratio(r.get("train_time_vs_teacher")),
            ratio(r.get("train_time_vs_plain")),
            round(r["inference_images_per_s"], 1) if r.get("inference_images_per_s") else "-",
            ratio(r.get("inference_time_vs_teacher")),
        ]
        for r in rows
    ]
    text = (
        f"One process, {settings['threads']} torch thread(s), batch {settings['batch_size']}, 32x32, "
        f"{settings['mixed_precision']} autocast; {settings['warmup']} warm-up steps per model, then "
        f"{settings['repeats']} round-robin rounds of {settings['steps']} steps each; the median round. Models: "
        f"timm resnet18, CIFAR stem, {settings['timm_model_args']}; students at stem stride {settings['stem_stride']} "
        "(RED blocks at the paper placement). The last row is a distillation step: the RED student's training "
        "step plus the frozen teacher's forward. Ratios are times (lower is faster). "
        f"{settings.get('machine_note', '')}"
    )
    return text.strip() + "\n\n" + markdown_table(header, table)


def main(argv: list[str] | None = None) -> int:
    from bench_classification import RECIPES

    parser = timing_parser(
        __doc__, "timed steps per round", "the smoke scale's tiny models (checks the harness)"
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--mixed_precision", choices=("bf16", "no"), default="bf16")
    args = parser.parse_args(argv)
    output_dir = check_timing_args(parser, args, ("threads", "batch_size", "steps", "repeats"))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    recipe = RECIPES["smoke" if args.smoke else "cpu"]
    models = build_models(recipe.timm_model_args, recipe.stem_stride)
    start = time.perf_counter()
    rows = measure(models, args.batch_size, args.steps, args.repeats, args.warmup, args.mixed_precision)
    settings = {
        "threads": args.threads,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "mixed_precision": args.mixed_precision,
        "timm_model_args": recipe.timm_model_args,
        "stem_stride": recipe.stem_stride,
        "machine_note": args.machine_note,
    }
    result = part_result(
        "classification_timing",
        "smoke" if args.smoke else "cpu",
        settings=settings,
        rows=rows,
        markdown=markdown(rows, settings),
        entry_command="python "
        + " ".join([relative(__file__), *(argv if argv is not None else sys.argv[1:])]),
        total_wall_s=round(time.perf_counter() - start, 1),
    )
    write_json(output_dir / "results" / RESULTS_NAME, result)
    from report import render

    render(output_dir)
    print(result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
