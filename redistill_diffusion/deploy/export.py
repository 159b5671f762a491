"""Export a `Deployable` to ONNX (``torch.onnx.export``, run with onnxruntime) and ExecuTorch (``.pte``,
XNNPACK-delegated or the portable CPU kernels), checked against eager PyTorch before it is kept.

Each file is written under a temporary name, run in its runtime on fixed inputs (timesteps spread over
the schedule for a denoiser) and compared with the eager module; only a file that matches within
`TOLERANCE` is renamed into place. A failed export or check leaves nothing behind.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import one_line
from .extras import BACKENDS, FORMATS, require
from .runtimes import EagerRunner, runner_for
from .sources import Deployable

# |runtime - eager| <= ATOL + RTOL * max|eager|, element-wise maximum, fp32 (docs/deploy.md).
ATOL = 1e-4
RTOL = 1e-4
TOLERANCE_TEXT = f"max |runtime - eager| <= {ATOL:g} + {RTOL:g} * max |eager|"
FILE_NAMES = {"onnx": "model.onnx", "executorch": "model.pte"}
ONNX_EXAMPLE_BATCH = 2  # torch.export specialises a dimension of size 1; 2 keeps the batch dynamic
ONNX_CHECK_BATCHES = (1, 4)


@dataclass
class ExportedFile:
    """One exported file and how it was checked."""

    format: str
    path: str
    runtime: str
    batch_sizes: list[
        int
    ]  # the batch sizes the file was checked at (ExecuTorch: the one it was exported for)
    max_abs_error: float
    max_abs_reference: float
    tolerance: str = TOLERANCE_TEXT
    backend: str | None = None
    planned_bytes: int | None = None  # ExecuTorch: its memory plan's activation buffers
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _within_tolerance(error: float, reference: float) -> bool:
    return math.isfinite(error) and error <= ATOL + RTOL * reference


def check_against_eager(deployable: Deployable, runner, batch_sizes, seed: int = 0) -> tuple[float, float]:
    """The largest |runtime - eager| (and the largest |eager|) over fixed inputs at ``batch_sizes``."""
    eager = EagerRunner(deployable.module)
    error, reference = 0.0, 0.0
    for batch in batch_sizes:
        inputs = deployable.example_inputs(batch, seed=seed)
        expected = eager(*inputs).float()
        got = runner(*inputs).float()
        if got.shape != expected.shape:
            raise ValueError(
                f"the exported model returned shape {list(got.shape)}, eager {list(expected.shape)}"
            )
        error = max(error, (got - expected).abs().max().item())
        reference = max(reference, expected.abs().max().item())
    return error, reference


def _unsupported(fmt: str, deployable: Deployable, error: BaseException) -> ValueError:
    return ValueError(
        f"could not export {deployable.source} to {fmt}: {one_line(error)[:400]} (an operator or construct "
        f"{fmt} does not support; nothing was written; try the other --format, or report the model)"
    )


def _onnx_dynamic_shapes(deployable: Deployable):
    batch = torch.export.Dim("batch", min=1, max=4096)
    return tuple({0: batch} for _ in deployable.input_names)


def export_onnx(deployable: Deployable, path: str | os.PathLike, opset: int | None = None) -> None:
    """Write ``deployable`` as ONNX (dynamic batch, torch.onnx's dynamo exporter) to ``path``."""
    require("onnx", "ONNX export")
    inputs = deployable.example_inputs(ONNX_EXAMPLE_BATCH)
    weights = sum(p.numel() * p.element_size() for p in deployable.module.parameters())
    kwargs = {} if opset is None else {"opset_version": opset}
    try:
        torch.onnx.export(
            deployable.module,
            inputs,
            str(path),
            dynamo=True,
            input_names=deployable.input_names,
            output_names=deployable.output_names,
            dynamic_shapes=_onnx_dynamic_shapes(deployable),
            external_data=weights >= 2**31 - 2**24,  # protobuf's 2 GB limit
            verbose=False,
            **kwargs,
        )
    except Exception as error:  # the exporter's many error types all mean "this model does not export"
        raise _unsupported("ONNX", deployable, error) from error


def executorch_program(deployable: Deployable, batch_size: int = 1, backend: str = "xnnpack"):
    """The lowered ExecuTorch program (``ExecutorchProgramManager``) for inputs of ``batch_size``."""
    require("executorch", "ExecuTorch export")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}.")
    from executorch.exir import to_edge_transform_and_lower

    partitioner = []
    if backend == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = [XnnpackPartitioner()]
    inputs = deployable.example_inputs(batch_size)
    try:
        exported = torch.export.export(deployable.module, inputs)
        edge = to_edge_transform_and_lower(
            exported, transform_passes=_fold_constants(), partitioner=partitioner
        )
        return edge.to_executorch()
    except Exception as error:  # export / edge-dialect / lowering errors: the model does not lower
        raise _unsupported("ExecuTorch", deployable, error) from error


def _fold_constants():
    """ExecuTorch's constant propagation as a pass on the edge program, before lowering.

    The edge dialect decomposes ``nn.Linear`` into ``permute_copy(weight)`` + ``addmm``; without folding,
    the portable program transposes every linear weight at run time into a planned activation buffer (1 MiB
    for the 512x512 time-embedding layer of the CIFAR-10 UNet, more than the stride-4 student's whole
    activation peak). Folded, the transposed weight is stored once in place of the original.
    """
    from executorch.exir.pass_base import ExportedProgramPassBase, ExportedProgramPassResult
    from executorch.exir.pass_manager import ExportedProgramPassManager
    from executorch.exir.passes.constant_prop_pass import constant_prop_pass

    class FoldConstants(ExportedProgramPassBase):
        def call(self, exported_program):
            return ExportedProgramPassResult(constant_prop_pass(exported_program), True)

    return ExportedProgramPassManager([FoldConstants()])


def planned_bytes(program) -> int:
    """Activation bytes of an ExecuTorch program's memory plan (what the runtime allocates for it).

    ``program`` is an ``ExecutorchProgramManager``, the bytes of a ``.pte`` file or its path. Buffer 0 is
    reserved (always 0); the others are the mutable arenas the memory planner laid the tensors out in.
    """
    if isinstance(program, (str, os.PathLike)):
        program = Path(program).read_bytes()
    if isinstance(program, (bytes, bytearray)):
        require("executorch", "reading an ExecuTorch program's memory plan")
        from executorch.exir._serialize._program import deserialize_pte_binary

        decoded = deserialize_pte_binary(bytes(program))
        plan = getattr(decoded, "program", decoded).execution_plan[0]
    else:
        plan = program.executorch_program.execution_plan[0]
    return int(sum(plan.non_const_buffer_sizes))


def export_executorch(
    deployable: Deployable, path: str | os.PathLike, batch_size: int = 1, backend: str = "xnnpack"
) -> int:
    """Write ``deployable`` as an ExecuTorch ``.pte`` for ``batch_size``; return its planned activation bytes."""
    program = executorch_program(deployable, batch_size, backend)
    Path(path).write_bytes(program.buffer)
    return planned_bytes(program)


def export_file(
    deployable: Deployable,
    fmt: str,
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 1,
    backend: str = "xnnpack",
) -> ExportedFile:
    """Export, check against eager, then move into ``output_dir/model.{onnx,pte}``; nothing stays on failure."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    final = Path(output_dir) / FILE_NAMES[fmt]
    staging = Path(output_dir) / f".{final.name}.partial"  # same filesystem: the moves below are renames
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    partial = staging / final.name  # ONNX external data keeps its own name, model.onnx.data
    try:
        planned = None
        if fmt == "onnx":
            export_onnx(deployable, partial)
            batches = list(ONNX_CHECK_BATCHES)
        else:
            planned = export_executorch(deployable, partial, batch_size, backend)
            batches = [batch_size]
        runner = runner_for(partial)
        error, reference = check_against_eager(deployable, runner, batches)
        if not _within_tolerance(error, reference):
            raise ValueError(
                f"{deployable.source} exported to {fmt} differs from eager PyTorch by {error:.3g} (largest "
                f"output {reference:.3g}; allowed: {TOLERANCE_TEXT}); nothing was written"
            )
        del runner  # release the file before it is renamed
        for written in sorted(staging.iterdir()):
            os.replace(written, final.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportedFile(
        format=fmt,
        path=str(final),
        runtime="onnxruntime" if fmt == "onnx" else "executorch",
        batch_sizes=batches,
        max_abs_error=error,
        max_abs_reference=reference,
        backend=backend if fmt == "executorch" else None,
        planned_bytes=planned,
    )


__all__ = [
    "ATOL",
    "BACKENDS",
    "FILE_NAMES",
    "RTOL",
    "TOLERANCE_TEXT",
    "ExportedFile",
    "check_against_eager",
    "executorch_program",
    "export_executorch",
    "export_file",
    "export_onnx",
    "planned_bytes",
]
