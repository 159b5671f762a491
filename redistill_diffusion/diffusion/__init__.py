"""The diffusion task, the sibling of `classification/`: the UNet student (`model`, the self-contained file
saved students carry), its taps (`unet_taps`), UNet / scheduler configs (`configs`), teacher/student pairs
from a config (`pairs`), the flags (`arguments`), the training task (`task`, built from `task_inputs`) and run (`run`), pipeline
folders in and out (`pipeline_io`, `component_file`), sampling and evaluating pipelines (`sampling`,
`evaluate`) and the DDPM card (`card`)."""

from .model import ReDistillUNet2DModel

__all__ = ["ReDistillUNet2DModel"]
