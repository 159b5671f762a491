"""One memory measurement in a fresh process: load a model in a runtime, run one forward, report how far
the resident memory rose above what it was after loading.

    python -m redistill_diffusion.deploy.probe --runtime onnxruntime --model model.onnx --inputs inputs.safetensors

Prints one JSON line: ``rss_after_load`` (VmRSS once the model and inputs are loaded), ``peak_rss``
(VmHWM, the kernel's high-water mark, reset just before the forward through /proc/self/clear_refs) and
``peak_above_load`` (their difference: the memory the forward needed). Linux only: the figure is the
kernel's, not an allocator's. `memory.runtime_rss` runs it and takes the median of repeats.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def rss_fields() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    values = {}
    for line in STATUS.read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak() -> None:
    """Set the kernel's peak resident size (VmHWM) back to the current one (Linux >= 4.0)."""
    CLEAR_REFS.write_text("5")


def supported() -> bool:
    import os

    return STATUS.is_file() and CLEAR_REFS.exists() and os.access(CLEAR_REFS, os.W_OK)


def _load(runtime: str, model: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    if runtime == "eager":
        from .runtimes import EagerRunner
        from .sources import load_deployable

        return EagerRunner(load_deployable(model).module)
    from .runtimes import runner_for

    return runner_for(model, threads=threads)


def _make_resident(runner) -> None:
    """Read every weight once: a safetensors file is mapped lazily, and pages first touched by the forward
    would be counted as its memory. (onnxruntime copies weights into its session; ExecuTorch programs are
    read into memory by `ExecuTorchRunner`.)"""
    module = getattr(runner, "module", None)
    if module is not None:
        import torch

        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.sum()


def measure(runtime: str, model: str, inputs_path: str, threads: int = 1, warmup: int = 0) -> dict:
    from safetensors.torch import load_file

    runner = _load(runtime, model, threads)
    _make_resident(runner)
    loaded = load_file(inputs_path)
    inputs = [loaded[str(i)] for i in range(len(loaded))]
    for _ in range(warmup):
        runner(*inputs)
    gc.collect()
    reset_peak()
    after_load = rss_fields()["VmRSS"]
    start = time.perf_counter()
    output = runner(*inputs)
    seconds = time.perf_counter() - start
    peak = rss_fields()["VmHWM"]
    return {
        "runtime": runtime,
        "batch": int(inputs[0].shape[0]),
        "output_shape": list(output.shape),
        "rss_after_load": after_load,
        "peak_rss": peak,
        "peak_above_load": peak - after_load,
        "forward_s": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", required=True, choices=("eager", "onnxruntime", "executorch"))
    parser.add_argument("--model", required=True, help="a saved model folder (eager), a .onnx or a .pte file")
    parser.add_argument("--inputs", required=True, help="a safetensors file with tensors '0', '1', ...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0, help="forwards before the measured one (default 0)")
    args = parser.parse_args(argv)
    if not supported():
        print(json.dumps({"error": "needs Linux's /proc/self/clear_refs to reset the peak resident size"}))
        return 2
    print(json.dumps(measure(args.runtime, args.model, args.inputs, args.threads, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
