"""Every distillation method behind one interface, so the trainer knows nothing of a particular method.

A :class:`Distiller` takes the student's and the (frozen) teacher's outputs and tapped features and
returns a dict of named, already-weighted losses; their sum is the distillation term. The trainer
combines ``(1 - distill_weight) * task_loss + distill_weight * sum(losses.values())`` and logs each
name. Outputs are noise predictions (B x C x H x W) for diffusion and logits (B x K) for
classification; feature dicts are keyed by normalised taps (``"module:output"`` / ``"module:input"``).

Methods (``build_distiller(name, ...)``): ``vanilla``, ``student_plus``, ``output_mse``, ``fitnet``,
``at``, ``red``, ``kd``, ``dkd``, and composites such as ``red+output_mse`` or ``red+kd`` whose
term is the average of their components (docs/architecture.md, "Distiller interface").

A method's options are the fields of its ``Options`` dataclass (`REDOptions`, `KDOptions`, ...), named
after the method (``red_alpha``, ``kd_temperature``) and with their defaults; the method reads its
values from it, `distiller_options` lists them, and the builders pass a method only the options it
takes, so the CLI flags, the builder and the methods cannot disagree. `build_model_distiller` is the one path from (name, student, teacher, pairs,
options) to a distiller that both tasks use.

The package, one module per method family: `base` (the interface and the registry), `plain` (no teacher),
`response` (output methods), `feature` (feature methods), `build` (composites, the name parser, the option
routing and the builders). Import from ``redistill_diffusion.distillers``.
"""

# The methods register in the order they are imported here (`available_distillers`, error messages).
# isort: off
from .plain import StudentPlusDistiller, VanillaDistiller
from .response import DKDDistiller, DKDOptions, KDDistiller, KDOptions, OutputMSEDistiller, OutputMSEOptions
from .feature import (
    ATDistiller,
    ATOptions,
    FitNetDistiller,
    FitNetOptions,
    REDDistiller,
    REDOptions,
    attention_map,
)

# isort: on
from .base import Distiller, NoOptions, Pair, Shapes, available_distillers, register_distiller
from .build import (
    CompositeDistiller,
    DistillerSpec,
    all_distiller_options,
    build_distiller,
    build_model_distiller,
    distillation_options,
    distiller_options,
    option_defaults,
    parse_distiller,
)

__all__ = [
    "ATDistiller",
    "ATOptions",
    "CompositeDistiller",
    "DKDDistiller",
    "DKDOptions",
    "Distiller",
    "DistillerSpec",
    "FitNetDistiller",
    "FitNetOptions",
    "KDDistiller",
    "KDOptions",
    "NoOptions",
    "OutputMSEDistiller",
    "OutputMSEOptions",
    "Pair",
    "REDDistiller",
    "REDOptions",
    "Shapes",
    "StudentPlusDistiller",
    "VanillaDistiller",
    "all_distiller_options",
    "attention_map",
    "available_distillers",
    "build_distiller",
    "build_model_distiller",
    "distillation_options",
    "distiller_options",
    "option_defaults",
    "parse_distiller",
    "register_distiller",
]
