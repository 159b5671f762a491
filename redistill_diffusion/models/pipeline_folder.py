"""Deprecated: moved to `redistill_diffusion.diffusion.pipeline_io`; this module only keeps the old import path working."""

import warnings

from ..diffusion.pipeline_io import *  # noqa: F403

warnings.warn(
    "redistill_diffusion.models.pipeline_folder moved to redistill_diffusion.diffusion.pipeline_io",
    DeprecationWarning,
    stacklevel=2,
)
