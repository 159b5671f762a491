"""redistill-diffusion: ReDistill students with 4x lower peak activation memory for diffusers UNets
and timm CNNs, trained with residual encoded distillation against the frozen teacher."""

# DiffusionPipeline.from_pretrained resolves the unet class named in model_index.json through this
# package and needs `ModelMixin` at its top level to recognise it as a model.
from diffusers import ModelMixin  # noqa: F401

from .models.remote_code import register_with_diffusers
from .models.unet_student import ReDistillUNet2DModel
from .red import REDBlock, attach_red_blocks, init_red_blocks, red_distance

# Saved students name the component module "redistill_unet" (a file in the folder, for processes
# without this package); here it resolves to the package's class, with no trust_remote_code needed.
register_with_diffusers()

__version__ = "0.1.0"
__all__ = [
    "ReDistillUNet2DModel",
    "REDBlock",
    "attach_red_blocks",
    "init_red_blocks",
    "red_distance",
    "__version__",
]
