"""Deprecated: moved to `redistill_diffusion.diffusion.component_file`; this module only keeps the old import path working."""

import warnings

from ..diffusion.component_file import *  # noqa: F403

warnings.warn(
    "redistill_diffusion.models.remote_code moved to redistill_diffusion.diffusion.component_file",
    DeprecationWarning,
    stacklevel=2,
)
