"""Part 5: the 4x in the runtimes people ship on: ExecuTorch's memory plan, the resident memory of one
forward in onnxruntime and eager PyTorch (fresh processes), CUDA where there is one, and latency.

    python benchmarks/bench_deploy.py --budget cpu      # writes benchmarks/results/deploy.{json,md}
    python benchmarks/run.py --budget cpu --only deploy # the same, and regenerates RESULTS.md

The google/ddpm-cifar10-32 UNet (random weights: memory does not depend on weight values) and its stem-stride
2 and 4 students, side by side with the tracer's exact count and the paper's convention. The smoke budget
measures the tiny-ddpm-32 UNet in ExecuTorch only (seconds). A runtime whose package is missing is left out
and named in the notes (`pip install 'redistill-diffusion[deploy]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BUDGETS, fmt_bytes, markdown_table, part_result  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
SETTINGS = {
    "smoke": {"config": "tiny-ddpm-32", "strides": (2,), "batches": (1,), "runtimes": ("executorch",)},
    "cpu": {
        "config": "google/ddpm-cifar10-32",
        "strides": (2, 4),
        "batches": (1, 16),
        "runtimes": ("executorch", "onnxruntime", "eager", "cuda"),
    },
}
SETTINGS["paper"] = SETTINGS["cpu"]
REPEATS = {"smoke": 1, "cpu": 3, "paper": 3}
LATENCY_REPEATS = 10


def _tracer_rows(teacher, student, input_shape, batches) -> list[dict[str, Any]]:
    from redistill_diffusion.memory import measure_peak_memory

    rows = []
    for convention, convention_batches in (("exact", batches), ("paper", (1,))):
        for batch in convention_batches:
            reports = [
                measure_peak_memory(m, input_shape, convention=convention, batch_size=batch)
                for m in (teacher, student)
            ]
            rows.append(
                {
                    "runtime": "tracer" if convention == "exact" else "paper",
                    "measure": "exact liveness (eager)" if convention == "exact" else "ReDistill estimator",
                    "batch": batch if convention == "exact" else "per sample",
                    "teacher": reports[0].peak_bytes,
                    "student": reports[1].peak_bytes,
                    "ratio": reports[0].peak_bytes / reports[1].peak_bytes,
                }
            )
    return rows


def _latency(pair, runtimes, scratch: Path, progress) -> dict[str, Any]:
    """Batch-1 latency in every runtime, from the files `runtime_memory` kept in ``scratch`` (exported here
    only where it did not: each export of the CIFAR-10 UNet takes minutes on 2 cores)."""
    from redistill_diffusion.deploy.export import export_executorch, export_onnx
    from redistill_diffusion.deploy.measure import runtime_latency

    files: dict[str, dict[str, str]] = {}
    for runtime, name in (("onnxruntime", "{role}.onnx"), ("executorch", "{role}_xnnpack_b1.pte")):
        if runtime not in runtimes:
            continue
        files[runtime] = {}
        for role, deployable in pair.items():
            path = scratch / name.format(role=role)
            files[runtime][role] = str(path)
            if path.is_file():
                continue
            progress(f"latency: exporting the {role} to {runtime}")
            if runtime == "onnxruntime":
                export_onnx(deployable, path)
            else:
                export_executorch(deployable, path, 1, "xnnpack")
    return runtime_latency(pair, files, batch=1, repeats=LATENCY_REPEATS, threads=1)


def run(output_dir, work_dir=None, budget: str = "cpu", **_: Any) -> dict[str, Any]:
    import tempfile
    import time

    start = time.perf_counter()

    from redistill_diffusion.deploy.extras import available
    from redistill_diffusion.deploy.measure import runtime_memory
    from redistill_diffusion.deploy.sources import denoiser_deployable
    from redistill_diffusion.diffusion.configs import load_unet_config
    from redistill_diffusion.diffusion.pairs import build_unet_pair

    settings = SETTINGS[budget]
    notes = []
    runtimes = []
    for runtime in settings["runtimes"]:
        needs = {"onnxruntime": "onnx", "executorch": "executorch"}.get(runtime)
        if needs and not available(needs):
            notes.append(
                f"{runtime} left out: its package is not installed (pip install 'redistill-diffusion[deploy]')"
            )
            continue
        runtimes.append(runtime)
    if not [r for r in runtimes if r != "cuda"]:
        return part_result("deploy", budget, status="skipped", reason="; ".join(notes), notes=notes)
    config = load_unet_config(settings["config"]).config
    resolution = int(config["sample_size"])
    input_shape = (int(config.get("in_channels", 3)), resolution, resolution)
    models = []
    latency_rows = {}
    results_dir = Path(output_dir) / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    scratch_root = Path(work_dir) if work_dir else None
    if scratch_root:
        scratch_root.mkdir(parents=True, exist_ok=True)
    for stride in settings["strides"]:
        teacher, student = build_unet_pair(config, stride)
        pair = {
            "teacher": denoiser_deployable(teacher, input_shape=input_shape),
            "student": denoiser_deployable(student, input_shape=input_shape),
        }
        print(f"[deploy] {settings['config']} stem stride {stride}", flush=True)
        rows = _tracer_rows(teacher, student, input_shape, settings["batches"])
        with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
            rows += runtime_memory(
                pair,
                runtimes,
                batches=settings["batches"],
                repeats=REPEATS[budget],
                work_dir=scratch_root,
                backends=("portable",) if budget == "smoke" else ("portable", "xnnpack"),
                progress=lambda line: print(f"[deploy]   {line}", flush=True),
                keep_dir=scratch,
            )
            models.append({"config": settings["config"], "stem_stride": stride, "rows": rows})
            if budget != "smoke":
                latency_rows[stride] = _latency(
                    pair, runtimes, Path(scratch), lambda line: print(f"[deploy]   {line}", flush=True)
                )
    markdown = _markdown(models, latency_rows, settings)
    (results_dir / "deploy.md").write_text(markdown + "\n", encoding="utf-8")
    return part_result(
        "deploy",
        budget,
        models=models,
        latency={str(k): v for k, v in latency_rows.items()},
        runtimes=runtimes,
        markdown=markdown,
        notes=notes + NOTES,
        commands=[
            {
                "name": "deploy",
                "command": f"python benchmarks/bench_deploy.py --budget {budget}",
                "wall_s": round(time.perf_counter() - start, 1),
                "returncode": 0,
                "log": None,
            }
        ],
    )


NOTES = [
    "ExecuTorch: planned activations = the sum of the program's mutable memory-plan buffers "
    "(non_const_buffer_sizes), what the runtime allocates for activations; weights are separate. portable: "
    "every tensor is planned; xnnpack: only the delegate's inputs and outputs are, XNNPACK keeps its internal "
    "tensors in its own workspace, so the xnnpack figure is a lower bound of what the device needs.",
    "onnxruntime / eager: VmHWM minus VmRSS of a fresh process around one forward (median of the repeats), with "
    "MALLOC_MMAP_THRESHOLD_=65536 so freed buffers return to the kernel. Eager is measured after one warm-up "
    "forward, onnxruntime on its first run (its arena keeps what that run allocated). Both include what the "
    "tracer cannot see: oneDNN weight reorders and scratch buffers (a constant per model, same weights in "
    "teacher and student, which lowers the batch-1 ratio) and onnxruntime's arena rounding.",
    "Latency: one process, one thread, 2 warm-up forwards then teacher and student interleaved, median of "
    f"{LATENCY_REPEATS}; the machine was shared with a training job, so compare only within a row.",
]


def _cell(row: dict[str, Any]) -> list[Any]:
    ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
    return [
        row["runtime"],
        row["measure"],
        row["batch"],
        fmt_bytes(row["teacher"]),
        fmt_bytes(row["student"]),
        ratio,
    ]


def _markdown(models, latency_rows, settings) -> str:
    parts = []
    for entry in models:
        parts.append(
            f"**{entry['config']} UNet, stem stride {entry['stem_stride']}** (random weights, fp32, CPU)"
        )
        parts.append("")
        parts.append(
            markdown_table(
                ["runtime", "measure", "batch", "teacher", "student", "ratio"],
                [_cell(r) for r in entry["rows"]],
            )
        )
        parts.append("")
        latency = latency_rows.get(entry["stem_stride"])
        if latency:
            rows = [
                [runtime, f"{v['teacher'] * 1e3:.1f}", f"{v['student'] * 1e3:.1f}", f"{v['ratio']:.2f}x"]
                for runtime, v in latency.items()
            ]
            parts.append(f"Latency, batch 1, one thread (median of {LATENCY_REPEATS}, interleaved):")
            parts.append("")
            parts.append(markdown_table(["runtime", "teacher ms", "student ms", "speed-up"], rows))
            parts.append("")
    return "\n".join(parts).strip()


def main(argv: list[str] | None = None) -> int:
    from common import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--budget", choices=BUDGETS, default="cpu")
    parser.add_argument("--out_dir", "--out-dir", dest="out_dir", type=Path, default=BENCH_DIR)
    args = parser.parse_args(argv)
    result = run(args.out_dir, None, args.budget)
    result["entry_command"] = f"python benchmarks/bench_deploy.py --budget {args.budget}"
    write_json(args.out_dir / "results" / "deploy.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=1)[:2000])
    print(result.get("markdown", ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
