"""redistill-diffusion: ReDistill students with 4x lower peak activation memory for diffusers UNets
and timm CNNs, trained with residual encoded distillation against the frozen teacher."""

import logging as _logging
import sys as _sys


class _DropTorchaoImportNoise(_logging.Filter):
    """With the [deploy] extra, ExecuTorch brings torchao, which diffusers imports at start-up to allow
    torchao-quantised checkpoints; torchao 0.18 on torch 2.14 then logs two deprecation warnings (from torch's
    pytree) and diffusers one import warning, in every process, about quantisation this library never uses.
    Only those three messages are dropped."""

    NOISE = ("is an Enum subclass and is now natively supported", "Unable to import `torchao` Tensor objects")

    def filter(self, record: _logging.LogRecord) -> bool:
        return not any(text in str(record.msg) for text in self.NOISE)


for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).addFilter(_DropTorchaoImportNoise())

# Folders saved before the component file existed name this package in model_index.json; diffusers
# then needs `ModelMixin` at its top level to recognise the student class as a model.
from diffusers import ModelMixin  # noqa: E402, F401

# This file is the composition root: it imports both tasks, so what they register with the core is in place
# whatever a user imports first (importing any submodule of the package runs this file first).
from . import classification  # noqa: E402, F401  (registers `--feature_extractor classifier` with evaluation)
from .diffusion import evaluate as _diffusion_evaluate  # noqa: E402
from .diffusion import pipeline_io as _pipeline_io  # noqa: E402
from .diffusion import sampling as _diffusion_sampling  # noqa: E402
from .diffusion.evaluate import evaluate_pipelines  # noqa: E402
from .diffusion.model import ReDistillUNet2DModel  # noqa: E402
from .diffusion.pipeline_io import load_pipeline  # noqa: E402
from .diffusion.sampling import sample_images  # noqa: E402
from .evaluation.moved import register_moved  # noqa: E402
from .red import REDBlock, attach_red_blocks, init_red_blocks, red_distance  # noqa: E402

# Sampling and evaluating pipelines moved from evaluation/ to the diffusion task; the earlier spellings
# (`from redistill_diffusion.evaluation import evaluate_pipelines`, ...) keep working, with a DeprecationWarning.
_EVALUATION = f"{__name__}.evaluation"
register_moved(
    _EVALUATION,
    _diffusion_sampling,
    ("SAMPLERS", "generate_samples", "sample_images", "sample_pil_images", "with_sampler"),
)
register_moved(_EVALUATION, _diffusion_evaluate, ("denoiser_peak_memory", "evaluate_pipelines"))
register_moved(_EVALUATION, _pipeline_io, ("load_pipeline",))
register_moved(f"{_EVALUATION}.comparison", _diffusion_evaluate, ("pipeline_denoising_loss",))
# ... and so do the two module paths (`from redistill_diffusion.evaluation.sampling import sample_images`): the
# import system finds a submodule in sys.modules once the package is imported, which always runs this file first.
_sys.modules.setdefault(f"{_EVALUATION}.sampling", _diffusion_sampling)
_sys.modules.setdefault(f"{_EVALUATION}.evaluate", _diffusion_evaluate)

# Nothing of diffusers is patched here: the library loads pipelines with diffusion.pipeline_io.load_pipeline.

__version__ = "0.1.0"
__all__ = [
    "ReDistillUNet2DModel",
    "evaluate_pipelines",
    "load_pipeline",
    "sample_images",
    "REDBlock",
    "attach_red_blocks",
    "init_red_blocks",
    "red_distance",
    "__version__",
]
