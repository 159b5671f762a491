"""Deprecated: moved to `redistill_diffusion.diffusion.unet_taps`; this module only keeps the old import path working."""

import warnings

from ..diffusion.unet_taps import *  # noqa: F403

warnings.warn(
    "redistill_diffusion.models.unet_taps moved to redistill_diffusion.diffusion.unet_taps",
    DeprecationWarning,
    stacklevel=2,
)
