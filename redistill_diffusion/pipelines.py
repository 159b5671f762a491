"""Earlier home of the teacher loading, pipeline saving, card and Hub helpers; kept so old imports work.

Each name lives, once, with its responsibility (docs/architecture.md):

- `redistill_diffusion.hub`: Hub ids (`is_hub_id`), repo checks, `push_folder_to_hub`;
- `redistill_diffusion.models.pipeline_folder`: `load_teacher`, `save_ddpm_pipeline`;
- `redistill_diffusion.model_cards`: `model_card_description`, `write_model_card`;
- `redistill_diffusion.evaluation`: sampling (`sample_images`, `sample_pil_images`) and the grid
  writer (`save_sample_grid`).
"""

from __future__ import annotations

from .evaluation.report import save_sample_grid as save_image_grid
from .evaluation.sampling import sample_pil_images as sample_images
from .hub import HUB_IGNORE_PATTERNS, check_repo_id, create_hub_repo, push_folder_to_hub
from .model_cards import LIMITATIONS, PIPELINE_TAG, USAGE_SNIPPET, model_card_description, write_model_card
from .models.pipeline_folder import load_teacher, save_ddpm_pipeline

__all__ = [
    "HUB_IGNORE_PATTERNS",
    "LIMITATIONS",
    "PIPELINE_TAG",
    "USAGE_SNIPPET",
    "check_repo_id",
    "create_hub_repo",
    "load_teacher",
    "model_card_description",
    "push_folder_to_hub",
    "sample_images",
    "save_ddpm_pipeline",
    "save_image_grid",
    "write_model_card",
]
