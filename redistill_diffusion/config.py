"""Dataclass arguments and the one parser for CLI flags + YAML recipes.

A recipe is a flat YAML mapping of flag names (without ``--``) to values. Its values become the
parser's defaults and flags given on the command line override them, so
``--recipe recipes/ddpm_cifar10_redistill.yaml --max_train_steps 1000`` runs the paper recipe for
1000 steps. An unknown key in a recipe is an error, like an unknown flag. The same parser serves the
diffusion scripts, the classification script and evaluation: each passes its own dataclasses.
"""

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import HfArgumentParser


@dataclass
class TrainingArguments:
    """Everything the one training loop needs, whatever the task (flag names as in diffusers' scripts)."""

    output_dir: str = field(
        default="redistill-output", metadata={"help": "Where checkpoints, samples and the final model go."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the previous run in output_dir: remove the checkpoints, samples, logs and model it wrote "
            "(listed in its .redistill_outputs.json); other files are kept."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for model init, data order, noise and timesteps."})
    train_batch_size: int = field(default=16, metadata={"help": "Batch size per process."})
    num_epochs: int = field(
        default=100, metadata={"help": "Epochs to train (ignored when max_train_steps is set)."}
    )
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Total optimizer steps; overrides num_epochs."}
    )
    gradient_accumulation_steps: int = 1
    optimizer: Literal["adamw", "adam", "sgd"] = field(
        default="adamw", metadata={"help": "adamw/adam for DDPM, sgd for classification."}
    )
    learning_rate: float = 1e-4
    scale_lr: bool = field(
        default=False, metadata={"help": "Multiply learning_rate by batch size x accumulation x processes."}
    )
    lr_scheduler: str = field(
        default="cosine",
        metadata={
            "help": "diffusers.optimization.get_scheduler name: linear, cosine, constant, constant_with_warmup, ..."
        },
    )
    lr_warmup_steps: int = 500
    lr_step_rules: str | None = field(
        default=None,
        metadata={
            "help": "For --lr_scheduler piecewise_constant (a step schedule): 'mult:until_step,...,last_mult' in "
            "optimizer steps, e.g. '1:3000,0.1:6000,0.01' (no warmup)."
        },
    )
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    sgd_momentum: float = 0.9
    sgd_weight_decay: float = 1e-4
    sgd_nesterov: bool = False
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "Gradient clipping norm (None: no clipping)."}
    )
    use_ema: bool = field(
        default=True,
        metadata={
            "help": "Keep an exponential moving average of the main model, parameters and BatchNorm statistics (timm ModelEmaV3, diffusers' warmup schedule)."
        },
    )
    ema_max_decay: float = 0.9999
    ema_min_decay: float = 0.0
    ema_warmup: bool = field(
        default=True,
        metadata={"help": "EMA warmup 1 - (1 + step / inv_gamma) ** -power, as in diffusers' scripts."},
    )
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    distill_weight: float = field(
        default=0.5,
        metadata={
            "help": "a in (1 - a) * task + a * distillation (docs/architecture.md, Distiller interface)."
        },
    )
    task_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the task loss (cross-entropy, denoising MSE); default 1 - distill_weight with a "
            "distillation loss, 1 without (vanilla, student_plus, a teacher). 0.5 trains a plain student at the "
            "task weight of a distiller at --distill_weight 0.5."
        },
    )
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = field(
        default="no",
        metadata={
            "help": "bf16 is ~1.7x faster on CPUs that compute it natively (AVX512-BF16 / AMX) and slower than "
            "fp32 on the others; auto picks bf16 where it is native (CPU or GPU), else no."
        },
    )
    checkpointing_steps: int = field(
        default=500, metadata={"help": "Save a resumable checkpoint every N optimizer steps (0: never)."}
    )
    checkpoints_total_limit: int | None = field(
        default=None, metadata={"help": "Keep at most this many checkpoints."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder."}
    )
    validation_steps: int | None = field(
        default=None,
        metadata={"help": "Evaluate (diffusion: save a sample grid) every N steps; always at the end."},
    )
    validation_epochs: int | None = field(default=None, metadata={"help": "Evaluate every N epochs."})
    logger: Literal["tensorboard", "wandb", "none"] = field(
        default="tensorboard", metadata={"help": "Tracker for the named losses."}
    )
    logging_dir: str = field(default="logs", metadata={"help": "Tracker folder, relative to output_dir."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "0 keeps resume bit-exact."})
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_token: str | None = field(
        default=None, metadata={"help": "Never printed; prefer `huggingface-cli login` or HF_TOKEN."}
    )
    hub_private_repo: bool = False


@dataclass
class DataArguments:
    """Where the images come from and how they become tensors (shared with classification)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, a local dataset folder, a parquet/csv/json file, or redistill:shapes (offline)."
        },
    )
    dataset_config_name: str | None = None
    train_data_dir: str | None = field(default=None, metadata={"help": "An imagefolder directory."})
    data_files: list[str] = field(
        default_factory=list, metadata={"help": "parquet/csv/json files of one format."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Default: the first of image, img, ..."})
    label_column: str | None = None
    cache_dir: str | None = None
    resolution: int | None = field(default=None, metadata={"help": "Default: the model's sample_size."})
    center_crop: bool = field(
        default=True, metadata={"help": "Centre crop after resizing (else a random crop)."}
    )
    random_flip: bool = False
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Train on a random subset of this many images, drawn with --seed (same seed, same subset)."
        },
    )
    builtin_num_images: int = field(default=2048, metadata={"help": "Size of the redistill:shapes dataset."})


@dataclass
class DistillationArguments:
    """The distillation flags shared by both tasks (diffusion's `StudentArguments`, classification's
    `ClassifierArguments` inherit them): how the student starts, the method and its options, the RED
    blocks. The method options (``red_alpha``, ``kd_temperature``, ...) are the fields of the
    distillers' option dataclasses (`distillers.all_distiller_options`, checked by a test); ``None``
    leaves the method's own default. A task overrides a field only where its meaning differs
    (``stem_stride``)."""

    stem_stride: int = field(default=2, metadata={"help": "Stride of the student's first conv (2, 4, 8)."})
    student_init: Literal["random", "teacher"] = field(
        default="random",
        metadata={
            "help": "random: train the student from scratch (the paper's regime); teacher: copy every "
            "same-shape teacher weight (fine-tune regime, much faster to usable samples)."
        },
    )
    teacher_mode: Literal["eval", "train"] = field(
        default="eval",
        metadata={
            "help": "eval: the frozen teacher in eval mode (no dropout, BatchNorm running statistics); train: as "
            "the reference code, dropout and batch statistics active (both under no_grad)."
        },
    )
    distiller: str = field(
        default="red",
        metadata={
            "help": "vanilla, student_plus, output_mse, kd, dkd, fitnet, at, red, or a composite such as "
            "red+output_mse or red+kd (classification also takes none: plain training)."
        },
    )
    red_alpha: float | None = field(
        default=None,
        metadata={"help": "RED loss weight per pair (default 1; the paper: 1 on ImageNet, 50 on STL10)."},
    )
    red_distance: Literal["cosine", "mse"] | None = None
    red_kernel_size: int = 3
    red_variant: Literal["full", "no_gate", "no_residual", "no_shortcut"] = "full"
    red_norm: Literal["batch", "group"] = field(
        default="batch",
        metadata={
            "help": "Normalisation in the RED blocks: batch (the paper) or group (per-sample, for denoisers)."
        },
    )
    red_init: Literal["paper", "identity"] = field(
        default="paper",
        metadata={
            "help": "RED block initialisation: paper (PyTorch default) or identity (start as a pass-through)."
        },
    )
    output_mse_weight: float | None = None
    kd_temperature: float | None = None
    kd_weight: float | None = None
    dkd_alpha: float | None = None
    dkd_beta: float | None = None
    dkd_temperature: float | None = None
    fitnet_weight: float | None = None
    at_weight: float | None = None
    at_p: float | None = None


def load_recipe(path: str) -> dict[str, Any]:
    """Read a flat YAML recipe (flag name -> value)."""
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recipe {path!r} not found.")
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "not YAML"
        raise ValueError(f"Recipe {path!r} is not valid YAML ({problem}{where}).") from None
    except UnicodeDecodeError:
        raise ValueError(f"Recipe {path!r} is not a YAML text file.") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path!r} must be a mapping of flag names to values.")
    return recipe


class _OneLineErrors:
    """argparse prints usage and exits on a bad flag; raise instead, so every entry point reports it in
    one line like any other bad input (`redistill_diffusion.errors`)."""

    def error(self, message: str):
        from .redaction import redact_text

        raise ValueError(redact_text(f"{message} (see --help)."))


class _PreParser(_OneLineErrors, argparse.ArgumentParser):
    pass


class _Parser(_OneLineErrors, HfArgumentParser):
    pass


# A negative number in scientific notation (-1e-3) looks like a flag to argparse, which only takes
# -1 and -0.5 as values; `_attach_negative_numbers` rewrites ``--flag -1e-3`` to ``--flag=-1e-3``.
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def _attach_negative_numbers(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    for token in args:
        previous = out[-1] if out else ""
        if _NEGATIVE_NUMBER.match(token) and previous.startswith("--") and "=" not in previous:
            out[-1] = f"{previous}={token}"
        else:
            out.append(token)
    return out


def build_parser(dataclass_types: Sequence[type], **kwargs) -> HfArgumentParser:
    # No prefix matching: `--hub_tok X` must be refused, not taken for --hub_token (and copied verbatim).
    kwargs.setdefault("allow_abbrev", False)
    parser = _Parser(list(dataclass_types), **kwargs)
    parser.add_argument(
        "--recipe", type=str, default=None, help="YAML recipe whose values become defaults; flags override."
    )
    return parser


def parse_args(
    dataclass_types: Sequence[type],
    args: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    **parser_kwargs,
) -> tuple:
    """Parse ``args`` (default: sys.argv) into one instance per dataclass, recipe values as defaults.

    ``defaults`` overrides dataclass defaults for one task (a recipe and the flags override both).

    Returns the dataclass instances in order; the recipe path is not returned (its values are in them).
    """
    from .redaction import is_secret_name, remember_secrets, secret_option_values

    args = _attach_negative_numbers(sys.argv[1:] if args is None else args)
    remember_secrets(secret_option_values(args))  # masked in every message from here on, even a refusal
    pre = _PreParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--recipe", type=str, default=None)
    known, _ = pre.parse_known_args(args)
    parser = build_parser(dataclass_types, **parser_kwargs)
    if defaults:
        parser.set_defaults(**defaults)
    if known.recipe:
        recipe = load_recipe(known.recipe)
        valid = {f.name for dtype in dataclass_types for f in dataclasses.fields(dtype)}
        unknown = sorted(set(recipe) - valid)
        if unknown:
            raise ValueError(
                f"Recipe {known.recipe!r} has unknown key(s) {', '.join(unknown)}; keys are flag names without '--'."
            )
        parser.set_defaults(**recipe)
    outputs = parser.parse_args_into_dataclasses(args=args, look_for_args_file=False)
    parsed = tuple(o for o in outputs if dataclasses.is_dataclass(o))
    remember_secrets(  # a token from a recipe too
        getattr(o, f.name) for o in parsed for f in dataclasses.fields(o) if is_secret_name(f.name)
    )
    return parsed


def to_dict(*configs) -> dict[str, Any]:
    """Flatten dataclass instances into one dict (for trackers and model cards); secrets (any key that
    names a token, see `redaction.is_secret_name`) are removed."""
    from .redaction import drop_secret_keys

    merged: dict[str, Any] = {}
    for config in configs:
        merged.update(dataclasses.asdict(config))
    return drop_secret_keys(merged)
