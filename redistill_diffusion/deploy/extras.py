"""The optional `[deploy]` extra: which runtime needs which package, and one line when it is missing.

Training never imports these packages; only export, the runtime checks and `redistill memory --runtime`
do, and a missing one is a `MissingDeployExtra` (a ValueError, so every entry point prints one line and
exits with status 2) saying what to install.
"""

from __future__ import annotations

import importlib.util

RUNTIMES = ("eager", "onnxruntime", "executorch")
FORMATS = ("onnx", "executorch")
BACKENDS = ("xnnpack", "portable")  # ExecuTorch kernels: the XNNPACK delegate or the portable CPU ops
INSTALL = "pip install 'redistill-diffusion[deploy]'"
# What each runtime imports, in order: the first one missing is named in the error.
NEEDS = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),  # torch.onnx's exporter needs onnxscript
    "onnxruntime": ("onnxruntime",),
    "executorch": ("executorch",),
    "eager": (),
}


class MissingDeployExtra(ValueError):
    """An optional runtime package is not installed (one line: what is missing and how to install it)."""


def missing_module(runtime: str) -> str | None:
    """The first package ``runtime`` needs that is not importable, or None."""
    for module in NEEDS[runtime]:
        if importlib.util.find_spec(module) is None:
            return module
    return None


def available(runtime: str) -> bool:
    return missing_module(runtime) is None


def require(runtime: str, purpose: str) -> None:
    """Raise `MissingDeployExtra` naming the package ``purpose`` needs, before any work starts."""
    module = missing_module(runtime)
    if module is not None:
        raise MissingDeployExtra(
            f"{purpose} needs the Python package '{module}', which is not installed: run {INSTALL} "
            "(docs/deploy.md lists the versions checked)."
        )


__all__ = [
    "BACKENDS",
    "FORMATS",
    "INSTALL",
    "RUNTIMES",
    "MissingDeployExtra",
    "available",
    "missing_module",
    "require",
]
