"""UNet models: the student (`unet_student`, the self-contained file saved students carry), its tap
pairs (`unet_taps`), configs, teacher/student pairs and pipeline folders."""

from .unet_student import ReDistillUNet2DModel

__all__ = ["ReDistillUNet2DModel"]
