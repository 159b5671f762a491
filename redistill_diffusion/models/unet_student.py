"""Deprecated path of `redistill_diffusion.diffusion.model` (the self-contained student file). Kept without a
warning: folders saved before the component file existed name this module in their model_index.json."""

from ..diffusion.model import *  # noqa: F403
from ..diffusion.model import REDBlock, ReDistillUNet2DModel, install_red_blocks  # noqa: F401
