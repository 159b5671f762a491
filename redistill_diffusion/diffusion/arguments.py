"""The flags of the diffusion runs: the noise schedule and sample grids (`DDPMArguments`), the UNet a
plain DDPM run trains (`TeacherModelArguments`) and the UNet student (`StudentArguments`, which inherits
the distillation flags both tasks share from `config.DistillationArguments`)."""

from dataclasses import dataclass, field
from typing import Literal

from ..config import DistillationArguments


@dataclass
class DDPMArguments:
    """The noise schedule and sampling for sample grids.

    The schedule flags default to None, "whatever the model brings": a teacher trained from a config that has
    a scheduler keeps it unless a flag overrides it, and a student always trains on its teacher's schedule
    (a flag that disagrees with it is an error, never silently dropped). Without any: 1000 linear steps,
    epsilon prediction, as in diffusers' train_unconditional."""

    ddpm_num_steps: int | None = field(
        default=None, metadata={"help": "Training timesteps (default: the config's scheduler, else 1000)."}
    )
    ddpm_beta_schedule: str | None = field(
        default=None, metadata={"help": "Beta schedule (default: the config's scheduler, else linear)."}
    )
    prediction_type: Literal["epsilon", "sample", "v_prediction"] | None = field(
        default=None,
        metadata={"help": "What the UNet predicts (default: the config's scheduler, else epsilon)."},
    )
    sample_scheduler: Literal["ddpm", "ddim"] = field(
        default="ddpm", metadata={"help": "Sampler for sample grids (the saved pipeline is a DDPMPipeline)."}
    )
    ddpm_num_inference_steps: int = field(
        default=1000, metadata={"help": "Denoising steps for sample grids."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Images in a sample grid."})
    final_samples: bool = field(
        default=True,
        metadata={
            "help": "Sample a grid at the end of training (eval_batch_size images x ddpm_num_inference_steps "
            "steps: minutes on a CPU with the defaults); --no_final_samples skips it."
        },
    )
    sample_seed: int = field(default=0, metadata={"help": "Fixed seed of sample grids."})
    measure_memory: bool = field(
        default=True, metadata={"help": "Put teacher/student peak memory in the model card."}
    )
    heldout_data: str | None = field(
        default=None,
        metadata={
            "help": "Held-out images (same sources as --dataset_name): the held-out denoising loss is logged "
            "at every evaluation (fixed timesteps and noise, EMA weights)."
        },
    )
    heldout_num_images: int = field(default=500, metadata={"help": "Images of --heldout_data used."})
    heldout_timesteps: int = field(
        default=10, metadata={"help": "Evenly spaced timesteps at which the held-out loss is measured."}
    )
    timestep_bias_strategy: Literal["none", "earlier", "later", "range"] = field(
        default="none",
        metadata={
            "help": "Draw training timesteps with a bias (diffusers' SDXL example's flags): 'later' favours the "
            "noisiest --timestep_bias_portion of the timesteps, 'earlier' the least noisy, 'range' those in "
            "[--timestep_bias_begin, --timestep_bias_end); 'none' draws uniformly, as DDPM does."
        },
    )
    timestep_bias_multiplier: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the biased timesteps against the others (2: drawn twice as often; 0: never)."
        },
    )
    timestep_bias_portion: float = field(
        default=0.25, metadata={"help": "Share of the timesteps that 'later' / 'earlier' bias, in (0, 1)."}
    )
    timestep_bias_begin: int = field(default=0, metadata={"help": "First timestep that 'range' biases."})
    timestep_bias_end: int = field(
        default=1000, metadata={"help": "End (exclusive) of the timesteps that 'range' biases."}
    )


@dataclass
class TeacherModelArguments:
    """The UNet a plain DDPM run trains from scratch."""

    model_config_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "UNet config: a folder, a config.json, or a shipped name (tiny-ddpm-32, google-ddpm-cifar10-32)."
        },
    )


@dataclass
class StudentArguments(DistillationArguments):
    """How the UNet student is derived from the teacher and distilled (plus the shared distillation flags)."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local folder of a DDPM pipeline or of a UNet2DModel."}
    )
    output_head: Literal["transposed_conv", "overlapping_transposed_conv", "pixel_shuffle"] = (
        "transposed_conv"
    )
    subpixel_skip: bool = field(
        default=False,
        metadata={
            "help": "Hand the input's image-wide s x s sub-pixel means to the output with a learned, "
            "time-dependent gain (zero at the start): a stride-s stem hides them from the UNet's GroupNorms, "
            "and without them the student's samples keep a fine s-pixel grid (diffusion.model.SubpixelSkip)."
        },
    )
    input_skip: bool = field(
        default=False,
        metadata={
            "help": "Add the noisy input, mixed across channels by a learned time-dependent matrix (zero at the "
            "start), to the prediction: at high noise the prediction is mostly the input passed through per pixel, "
            "which a stride-s student otherwise has to carry through its coarse layers (diffusion.model.InputSkip)."
        },
    )
    input_skip_mixing: Literal["full", "diagonal"] = field(
        default="full",
        metadata={
            "help": "full: a channel-mixing matrix; diagonal: one gain per channel (diffusion.model.InputSkip)."
        },
    )
    stem: Literal["conv", "space_to_depth"] = field(
        default="conv",
        metadata={
            "help": "conv: the paper's stride-s 3x3 conv; space_to_depth: lossless PixelUnshuffle(s) + 3x3 conv "
            "(pair with --output_head pixel_shuffle, its inverse)."
        },
    )
    refiner_channels: int = field(
        default=0,
        metadata={
            "help": "Width of a thin full-resolution tail (conv -> time scale/shift -> SiLU -> zero-initialised "
            "conv, added to the prediction): the only layers that see single pixels; 0 turns it off (the paper's "
            "student). At <= C0 / s^2 channels the exact peak memory is unchanged "
            "(diffusion.model.FullResolutionRefiner)."
        },
    )
    refiner_depth: int = field(
        default=1,
        metadata={
            "help": "Hidden layers of the full-resolution tail (--refiner_channels): 1 is conv -> SiLU -> conv; each "
            "extra one a residual 3x3 conv at the same width (pixel-level capacity; they run one after another, so "
            "the peak usually stays: check with `redistill memory`)."
        },
    )
    student_head_init: Literal["paper", "random", "teacher"] = field(
        default="paper",
        metadata={
            "help": "paper: xavier gain 1e-5 (the reference code; predicts ~0 at the start); random: PyTorch's "
            "default; teacher: start the upsampling head as the teacher's conv_out (ICNR-style)."
        },
    )
    red_preset: Literal["paper", "full", "none"] = field(
        default="paper", metadata={"help": "Where RED blocks / feature pairs go."}
    )
    distill_pairs: list[str] = field(
        default_factory=list,
        metadata={"help": "Explicit pairs 'student_tap=teacher_tap' (replace the preset)."},
    )
    red_norm: Literal["batch", "group"] = field(
        default="group",
        metadata={
            "help": "Normalisation in the RED blocks: group (the diffusion default: a denoiser's batch mixes noise "
            "levels; measured better in docs/red_norm.md) or batch (the paper's BatchNorm)."
        },
    )
