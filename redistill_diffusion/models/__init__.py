from .unet_student import ReDistillUNet2DModel, unet_tap_pairs

__all__ = ["ReDistillUNet2DModel", "unet_tap_pairs"]
