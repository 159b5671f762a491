"""Memory and latency of a teacher and its student in the runtimes they ship on, side by side.

- ExecuTorch: the activation bytes of the program's memory plan (`export.planned_bytes`): what the
  runtime allocates on a device, computed by ExecuTorch's planner (portable kernels: every tensor is
  planned; XNNPACK: only the delegate's inputs and outputs, its internal tensors live in XNNPACK's own
  workspace).
- onnxruntime and eager PyTorch on CPU: the rise of resident memory (kernel's VmHWM) during one
  forward in a fresh process, above its memory once loaded (`probe`), median of repeats. Every buffer
  above 64 KiB is its own mapping (``MALLOC_MMAP_THRESHOLD_``), so freed memory goes back to the kernel
  and the figure follows allocations instead of glibc's reuse of freed heap. Eager runs one warm-up
  forward first (the cold first forward also pages in ~50 MB of library code and kernel state);
  onnxruntime is measured on its first run, since its arena keeps what that run allocated.
- latency: the same process, warm-up, teacher and student interleaved, median of repeats.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .extras import require
from .runtimes import runner_for
from .sources import Deployable

PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
WARMUP = {"eager": 1, "onnxruntime": 0, "executorch": 1}
# Starts the probe with the package and deploy/ as bare namespaces: importing redistill_diffusion runs
# its __init__, which imports diffusers (~5 s a process, and 4 to 48 processes a measurement).
LIGHT_START = (
    "import sys, types\n"
    "for name, path in (('redistill_diffusion', {root!r} + '/redistill_diffusion'),\n"
    "                   ('redistill_diffusion.deploy', {root!r} + '/redistill_diffusion/deploy')):\n"
    "    sys.modules[name] = module = types.ModuleType(name)\n"
    "    module.__path__ = [path]\n"
    "from redistill_diffusion.deploy.probe import main\n"
    "sys.exit(main(sys.argv[1:]))"
)


def _save_inputs(deployable: Deployable, batch: int, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({str(i): t.contiguous() for i, t in enumerate(deployable.example_inputs(batch))}, str(path))
    return path


def probe_rss(
    runtime: str, model: str | os.PathLike, inputs: str | os.PathLike, *, repeats: int = 3, threads: int = 1
) -> dict[str, Any]:
    """Median rise of resident memory over ``repeats`` fresh processes (`probe`), with every repeat's figure."""
    from . import probe

    if not probe.supported():
        raise ValueError(
            "resident-memory figures need Linux (/proc/self/clear_refs); use --runtime executorch"
        )
    env = {**os.environ, **PROBE_ENV, "OMP_NUM_THREADS": str(threads)}
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "redistill_diffusion.deploy.probe", "--runtime", runtime]
    if (
        runtime != "eager"
    ):  # the probe of a .onnx/.pte file needs neither the package's __init__ nor diffusers
        argv[1:3] = ["-c", LIGHT_START.format(root=package_root)]
    argv += ["--model", str(model), "--inputs", str(inputs), "--threads", str(threads)]
    argv += ["--warmup", str(WARMUP[runtime])]
    figures = []
    for _ in range(repeats):
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"memory probe of {model} in {runtime} failed: {last}")
        figures.append(json.loads(lines[-1]))
    rises = [f["peak_above_load"] for f in figures]
    return {
        "runtime": runtime,
        "peak_above_load": int(statistics.median(rises)),
        "repeats": rises,
        "rss_after_load": int(statistics.median(f["rss_after_load"] for f in figures)),
        "warmup_forwards": WARMUP[runtime],
    }


def save_for_eager(module, folder: Path) -> Path:
    """A model folder the probe's eager runtime loads (`sources.load_deployable`)."""
    from ..classification.hub import save_classifier

    inner = getattr(module, "unet", None)
    if inner is not None:
        inner.save_pretrained(str(folder), safe_serialization=True)
    else:
        save_classifier(module, folder)
    return folder


def runtime_memory(
    pair: dict[str, Deployable],
    runtimes: list[str],
    *,
    batches: tuple[int, ...] = (1, 16),
    repeats: int = 3,
    work_dir: str | os.PathLike | None = None,
    backends: tuple[str, ...] = ("portable", "xnnpack"),
    progress=print,
    keep_dir: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{runtime, measure, batch, teacher, student, ratio}`` for ``{"teacher": ..., "student": ...}``.

    ``keep_dir``: where to keep the exported files (``{role}.onnx``, ``{role}_{backend}_b{batch}.pte``) for
    a later use such as `runtime_latency` (each export of a large UNet takes minutes); by default they go
    to a temporary folder removed at the end.
    """
    from .export import executorch_program, export_onnx, planned_bytes

    for runtime in runtimes:
        if runtime in ("onnxruntime", "executorch"):
            require("onnx" if runtime == "onnxruntime" else "executorch", f"--runtime {runtime}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="redistill-runtime-") as scratch:
        scratch = Path(scratch)
        for runtime in runtimes:
            if runtime == "cuda":
                rows += _cuda_rows(pair, batches)
                continue
            if runtime == "executorch":
                for backend in backends:
                    for batch in batches:
                        row = {"runtime": "executorch", "measure": f"planned activations ({backend})"}
                        row["batch"] = batch
                        for role, deployable in pair.items():
                            progress(f"ExecuTorch {backend} memory plan: {role}, batch {batch}")
                            program = executorch_program(deployable, batch, backend)
                            row[role] = planned_bytes(program)
                            if keep_dir is not None:
                                (Path(keep_dir) / f"{role}_{backend}_b{batch}.pte").write_bytes(
                                    program.buffer
                                )
                        rows.append(_with_ratio(row))
                continue
            models = {}
            for role, deployable in pair.items():
                if runtime == "eager":
                    models[role] = save_for_eager(deployable.module, scratch / role)
                else:
                    progress(f"exporting the {role} to ONNX")
                    models[role] = Path(keep_dir or scratch) / f"{role}.onnx"
                    export_onnx(deployable, models[role])
            for batch in batches:
                inputs = _save_inputs(pair["teacher"], batch, scratch / f"inputs_{batch}.safetensors")
                row = {"runtime": runtime, "measure": "peak RSS above loaded", "batch": batch}
                for role in pair:
                    progress(f"{runtime}: {role}, batch {batch}, {repeats} fresh processes")
                    figure = probe_rss(runtime, models[role], inputs, repeats=repeats)
                    row[role] = figure["peak_above_load"]
                    row[f"{role}_repeats"] = figure["repeats"]
                rows.append(_with_ratio(row))
    return rows


def check_runtimes(runtimes: list[str], batches: list[int]) -> None:
    """One-line errors for `redistill memory --runtime` before any model is built."""
    from . import probe

    if any(b < 1 for b in batches):
        raise ValueError(f"--runtime_batches must be positive, got {' '.join(map(str, batches))}.")
    for runtime in runtimes:
        if runtime == "onnxruntime":
            require("onnx", "--runtime onnxruntime (the model is exported to ONNX first)")
        elif runtime == "executorch":
            require("executorch", "--runtime executorch")
        if runtime in ("onnxruntime", "eager") and not probe.supported():
            raise ValueError(
                f"--runtime {runtime} measures resident memory through Linux's /proc/self/clear_refs, which "
                "this system lacks; use --runtime executorch (its memory plan) instead."
            )


def runtime_memory_of_pair(
    teacher, student, input_shape, runtimes, batches, **kwargs
) -> list[dict[str, Any]]:
    """`runtime_memory` for a teacher/student pair of UNets or classifiers measured at ``input_shape``."""
    from diffusers import UNet2DModel

    from .sources import classifier_deployable, denoiser_deployable

    if isinstance(teacher, UNet2DModel):
        pair = {
            r: denoiser_deployable(m, input_shape=input_shape)
            for r, m in (("teacher", teacher), ("student", student))
        }
    else:
        pair = {
            r: classifier_deployable(m, input_shape, r)
            for r, m in (("teacher", teacher), ("student", student))
        }
    return runtime_memory(pair, list(runtimes), batches=tuple(batches), **kwargs)


def format_runtime_rows(rows: list[dict[str, Any]]) -> str:
    """The runtime figures as a text table (MB = bytes / 1024^2)."""
    lines = [
        f"{'runtime':<12} {'measure':<44} {'batch':>5} {'teacher MB':>11} {'student MB':>11} {'ratio':>7}"
    ]
    for row in rows:
        ratio = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
        lines.append(
            f"{row['runtime']:<12} {row['measure']:<44} {row['batch']:>5} {row['teacher'] / 1024**2:>11.3f} "
            f"{row['student'] / 1024**2:>11.3f} {ratio:>7}"
        )
    if not rows:
        lines.append("(no runtime figures: CUDA is not available here)")
    return "\n".join(lines)


def _with_ratio(row: dict[str, Any]) -> dict[str, Any]:
    row["ratio"] = row["teacher"] / row["student"] if row.get("student") else None
    return row


def _cuda_rows(pair: dict[str, Deployable], batches) -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return []
    rows = []
    for batch in batches:
        row = {"runtime": "cuda", "measure": "torch.cuda.max_memory_allocated above weights", "batch": batch}
        for role, deployable in pair.items():
            module = deployable.module.to("cuda")
            inputs = [t.to("cuda") for t in deployable.example_inputs(batch)]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            with torch.inference_mode():
                module(*inputs)
            torch.cuda.synchronize()
            row[role] = torch.cuda.max_memory_allocated() - before
            deployable.module.to("cpu")
        rows.append(_with_ratio(row))
    return rows


def latency(
    runners: dict[str, Any],
    inputs: dict[str, tuple],
    *,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, Any]:
    """Median seconds per forward of each runner, same process, warmed up, repeats interleaved (so load
    from other processes hits every model alike)."""
    for _ in range(warmup):
        for role, runner in runners.items():
            runner(*inputs[role])
    times: dict[str, list[float]] = {role: [] for role in runners}
    for _ in range(repeats):
        for role, runner in runners.items():
            start = time.perf_counter()
            runner(*inputs[role])
            times[role].append(time.perf_counter() - start)
    result: dict[str, Any] = {role: statistics.median(values) for role, values in times.items()}
    result["repeats"] = repeats
    if "teacher" in result and result.get("student"):
        result["ratio"] = result["teacher"] / result["student"]
    return result


def runtime_latency(
    pair: dict[str, Deployable],
    files: dict[str, dict[str, str]],
    *,
    batch: int = 1,
    repeats: int = 10,
    threads: int | None = None,
) -> dict[str, Any]:
    """Latency rows per runtime: eager always, plus every runtime with a file for both roles
    (``files[runtime][role]`` = path; ExecuTorch files must have been exported for ``batch``)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    inputs = {role: d.example_inputs(batch) for role, d in pair.items()}
    result = {"eager": latency({r: runner_for(d.module) for r, d in pair.items()}, inputs, repeats=repeats)}
    for runtime, paths in files.items():
        runners = {role: runner_for(paths[role], threads=threads) for role in pair}
        result[runtime] = latency(runners, inputs, repeats=repeats)
    return result


__all__ = [
    "check_runtimes",
    "format_runtime_rows",
    "latency",
    "probe_rss",
    "runtime_latency",
    "runtime_memory",
    "runtime_memory_of_pair",
    "save_for_eager",
]
