"""Deprecated: moved to `redistill_diffusion.diffusion.configs`; this module only keeps the old import path working."""

import warnings

from ..diffusion.configs import *  # noqa: F403

warnings.warn(
    "redistill_diffusion.models.configs moved to redistill_diffusion.diffusion.configs",
    DeprecationWarning,
    stacklevel=2,
)
