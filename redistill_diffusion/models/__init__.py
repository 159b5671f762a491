"""Deprecated: the UNet models moved to `redistill_diffusion.diffusion`. This package only keeps the old import
paths working (folders saved by earlier versions name ``redistill_diffusion.models.unet_student`` in their
model_index.json); nothing in the package imports it."""

from ..diffusion.model import ReDistillUNet2DModel

__all__ = ["ReDistillUNet2DModel"]
