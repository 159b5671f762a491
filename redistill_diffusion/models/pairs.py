"""Deprecated: moved to `redistill_diffusion.diffusion.pairs`; this module only keeps the old import path working."""

import warnings

from ..diffusion.pairs import *  # noqa: F403

warnings.warn(
    "redistill_diffusion.models.pairs moved to redistill_diffusion.diffusion.pairs",
    DeprecationWarning,
    stacklevel=2,
)
