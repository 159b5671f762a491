"""Run an exported model in its runtime: ``runner(*tensors) -> torch.Tensor`` for eager PyTorch,
onnxruntime (``.onnx``) and the ExecuTorch runtime (``.pte``), so checks, sampling, latency and the
memory probe treat every runtime alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .extras import require


class EagerRunner:
    """The PyTorch module itself, under inference mode (the reference every runtime is compared with)."""

    runtime = "eager"

    def __init__(self, module: nn.Module):
        self.module = module.eval()

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(*inputs)


class OnnxRunner:
    """An ``.onnx`` file in an onnxruntime CPU session (default session options but the thread count)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        require("onnxruntime", "running an ONNX model")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        self.session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {name: tensor.detach().cpu().numpy() for name, tensor in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feed)[0])


class ExecuTorchRunner:
    """A ``.pte`` program's ``forward`` in the ExecuTorch runtime (its inputs have the exported shapes)."""

    runtime = "executorch"

    def __init__(self, path: str | os.PathLike):
        require("executorch", "running an ExecuTorch program")
        from executorch.runtime import Runtime

        # From bytes, not a mapped file: the weights are resident once loaded, as on a device's RAM.
        self.program = Runtime.get().load_program(Path(path).read_bytes())
        self.method = self.program.load_method("forward")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.method.execute([t.contiguous() for t in inputs])[0]


def runner_for(model: nn.Module | str | os.PathLike, threads: int | None = None):
    """The runner of a module (eager), an ``.onnx`` file or a ``.pte`` file."""
    if isinstance(model, nn.Module):
        return EagerRunner(model)
    suffix = Path(model).suffix
    if suffix == ".onnx":
        return OnnxRunner(model, threads)
    if suffix == ".pte":
        return ExecuTorchRunner(model)
    raise ValueError(f"{model}: no runtime for '{suffix}' files; give a .onnx or .pte file.")


__all__ = ["EagerRunner", "ExecuTorchRunner", "OnnxRunner", "runner_for"]
