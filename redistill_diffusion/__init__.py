"""redistill-diffusion: ReDistill students with 4x lower peak activation memory for diffusers UNets
and timm CNNs, trained with residual encoded distillation against the frozen teacher."""

# DiffusionPipeline.from_pretrained resolves the unet class named in model_index.json through this
# package and needs `ModelMixin` at its top level to recognise it as a model.
from diffusers import ModelMixin  # noqa: F401

from .models.unet_student import ReDistillUNet2DModel
from .red import REDBlock, attach_red_blocks, init_red_blocks, red_distance

__version__ = "0.1.0"
__all__ = ["ReDistillUNet2DModel", "REDBlock", "attach_red_blocks", "init_red_blocks", "red_distance", "__version__"]
