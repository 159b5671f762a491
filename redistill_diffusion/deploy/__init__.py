"""Deploy a saved teacher or student: export to ONNX (onnxruntime) and ExecuTorch (``.pte``), check the
files against eager PyTorch, and measure memory and latency in those runtimes. Needs the optional
``[deploy]`` extra; training never imports this package. See docs/deploy.md.

    from redistill_diffusion.deploy import export_model
    report = export_model("outputs/cifar10-student", formats=("onnx", "executorch"))
"""

from .api import REPORT_NAME, deploy_markdown, export_model, update_card_deploy_section
from .export import ATOL, RTOL, TOLERANCE_TEXT, ExportedFile, export_file, planned_bytes
from .extras import FORMATS, RUNTIMES, MissingDeployExtra, available
from .sources import Deployable, classifier_deployable, denoiser_deployable, load_deployable

__all__ = [
    "ATOL",
    "FORMATS",
    "REPORT_NAME",
    "RTOL",
    "RUNTIMES",
    "TOLERANCE_TEXT",
    "Deployable",
    "ExportedFile",
    "MissingDeployExtra",
    "available",
    "classifier_deployable",
    "denoiser_deployable",
    "deploy_markdown",
    "export_file",
    "export_model",
    "load_deployable",
    "planned_bytes",
    "update_card_deploy_section",
]
