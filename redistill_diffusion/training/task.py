"""The contract between the one training loop (`Trainer`) and what it trains.

The loop owns everything that is the same for every experiment: Accelerate (devices, processes,
mixed precision, gradient accumulation), the optimizer and lr schedule, gradient clipping, EMA,
checkpoints and resume, logging, progress bars and the final hand-off. A *task* owns everything
that differs: which modules train, how one batch turns into losses, what "evaluate" means and what
the final artefact is. Diffusion distillation (`DiffusionDistillationTask`) and classification
distillation (`redistill_diffusion.classification`) are two tasks of the same loop.

A task implements this protocol (duck-typed; subclassing `TrainingTask` is optional):

    class MyTask:
        main_module_name = "student"            # the module EMA tracks and `save_final` exports

        def trainable_modules(self) -> dict[str, nn.Module]: ...
        def train_dataset(self) -> torch.utils.data.Dataset: ...
        def collate_fn(self, examples) -> Any: ...                  # optional
        def setup(self, accelerator) -> None: ...                    # optional: move frozen teachers to the device
        def compute_losses(self, batch, ctx: StepContext) -> TaskLosses: ...
        def evaluate(self, ctx: EvalContext) -> dict[str, float]: ...   # optional
        def save_final(self, output_dir: str, ctx: EvalContext) -> None: ...
        # optional, needed for --push_to_hub (the loop itself holds no Hub code):
        def create_hub_repo(self, repo_id: str, *, token, private, api) -> str: ...    # before training
        def push_to_hub(self, output_dir: str, repo_id: str, *, token, private, commit_message, api) -> None: ...

Rules the loop relies on:
- `compute_losses` uses the *prepared* modules in ``ctx.modules`` (they may be DDP wrappers), never
  the ones it returned from `trainable_modules` directly, so gradients are synchronised.
- Any randomness inside `compute_losses` (noise, timesteps, flips, crops) draws from
  ``ctx.generator``: the loop seeds it per process and stores it in every checkpoint, which is what
  makes a killed-and-resumed run bit-identical to an uninterrupted one. Dataset transforms should
  be deterministic for the same reason (or draw from the global torch RNG, which accelerate also
  restores, in the main process only: ``dataloader_num_workers=0``).
- Losses are returned *separately*: the task loss, and the named, already-weighted distillation
  losses of a `Distiller`. The loop combines them in one place (`combine_losses`):
  ``total = (1 - distill_weight) * task + distill_weight * sum(distillation)`` when the distiller
  returned any loss, else ``total = task``; ``--task_weight`` replaces the task's weight in both cases.
  Every named loss is logged.
- `create_hub_repo` runs on the main process before the first step (bad credentials or names stop
  the run then); `push_to_hub` uploads ``output_dir`` after `save_final`. ``api`` is a
  ``huggingface_hub.HfApi`` or a stand-in (tests), None for the default.
- `evaluate` and `save_final` run on the main process only, with the EMA weights swapped into the
  main module when EMA is on; they must not call collective operations.

Distillation tasks compute their distillation term with `distillation_forward`, the one call that
runs the student with its taps, the frozen teacher (when the distiller needs it) and the distiller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..taps import FeatureTaps


@dataclass
class TaskLosses:
    """What one batch costs. ``task``: the task's own loss (denoising MSE, cross-entropy).
    ``distillation``: named distillation losses, already weighted by their own alphas (may be empty).
    ``logs``: extra scalars to log (not optimised)."""

    task: torch.Tensor
    distillation: dict[str, torch.Tensor] = field(default_factory=dict)
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class StepContext:
    """Handed to `compute_losses` for every micro-batch."""

    modules: Mapping[str, nn.Module]  # prepared (possibly DDP-wrapped) trainable modules, by name
    generator: torch.Generator  # per-process RNG, saved in checkpoints; use it for all randomness
    device: torch.device
    global_step: int  # optimizer steps done so far
    accelerator: Any


@dataclass
class EvalContext:
    """Handed to `evaluate` and `save_final` (main process, EMA weights in place when EMA is on)."""

    modules: Mapping[str, nn.Module]  # unwrapped trainable modules, by name
    device: torch.device
    global_step: int
    epoch: int
    output_dir: str
    accelerator: Any
    metrics: dict[str, float] = field(default_factory=dict)  # latest evaluation metrics, for model cards
    # The run's output_dir, to read what earlier evaluations left there; ``output_dir`` is where this
    # evaluation / save writes (a staging folder whose files are committed when it succeeds).
    run_dir: str | None = None


@runtime_checkable
class TrainingTask(Protocol):
    """See the module docstring. Only the methods below are required."""

    main_module_name: str

    def trainable_modules(self) -> dict[str, nn.Module]: ...

    def train_dataset(self) -> torch.utils.data.Dataset: ...

    def compute_losses(self, batch: Any, ctx: StepContext) -> TaskLosses: ...

    def save_final(self, output_dir: str, ctx: EvalContext) -> None: ...


def unwrap_module(module: nn.Module, accelerator: Any = None) -> nn.Module:
    """The module itself under a DDP (or compile) wrapper: hooks must go on the real submodules."""
    if accelerator is not None:
        return accelerator.unwrap_model(module)
    return getattr(module, "module", module)


TEACHER_MODES = ("eval", "train")


def freeze_teacher(teacher: nn.Module | None, mode: str = "eval") -> str:
    """Freeze a distillation teacher (no gradients) in ``mode``: ``eval`` (its inference behaviour:
    no dropout, BatchNorm running statistics) or ``train`` (the reference code's: dropout and batch
    statistics, still under no_grad). Returns the checked mode.

    The teacher's 4D weights also move to the channels_last layout: a frozen teacher is never stepped or saved,
    so its layout is free, and its forward (run at every distillation step) is then faster on CPUs (oneDNN: 1.5-1.8x
    with bf16, 1.25x in fp32 for the benchmarks' teachers, ``benchmarks/bench_teacher_layout.py``); its outputs
    change only by float rounding."""
    if mode not in TEACHER_MODES:
        raise ValueError(f"teacher_mode must be 'eval' or 'train', got {mode!r}.")
    if teacher is not None:
        teacher.requires_grad_(False).train(mode == "train")
        teacher.to(memory_format=torch.channels_last)
    return mode


def _as_is(output: Any) -> Any:
    return output


def distillation_forward(
    student: nn.Module,
    inputs: Sequence[Any],
    *,
    teacher: nn.Module | None = None,
    distiller: nn.Module | None = None,
    target: torch.Tensor | None = None,
    output: Callable[[Any], torch.Tensor] = _as_is,
    accelerator: Any = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One training forward of a distillation task: taps -> teacher -> distiller losses.

    ``student(*inputs)`` runs with the distiller's student taps recorded (on the unwrapped module, so
    a DDP wrapper still synchronises gradients); when the distiller needs the teacher, ``teacher(*inputs)``
    runs under no_grad with its taps recorded (detached); the distiller then returns its named,
    weighted losses. ``output`` picks the prediction from a forward's result (diffusers: ``.sample``);
    ``target`` goes to the distiller (labels for DKD). Returns (student prediction, named losses); without
    a distiller, the plain student forward and no losses.
    """
    if distiller is None:
        return output(student(*inputs)), {}
    method = unwrap_module(distiller, accelerator)
    with FeatureTaps(unwrap_module(student, accelerator), method.student_taps()) as student_taps:
        student_output = output(student(*inputs))
    teacher_output, teacher_features = None, {}
    if method.requires_teacher:
        if teacher is None:
            raise ValueError(f"Distiller {method.name!r} needs a teacher.")
        with torch.no_grad(), FeatureTaps(teacher, method.teacher_taps(), detach=True) as teacher_taps:
            teacher_output = output(teacher(*inputs))
        teacher_features = teacher_taps.features
    losses = distiller(
        student_output=student_output,
        teacher_output=teacher_output,
        student_features=student_taps.features,
        teacher_features=teacher_features,
        target=target,
    )
    return student_output, dict(losses)


@runtime_checkable
class HubPublishingTask(Protocol):
    """The optional --push_to_hub hooks (see the module docstring)."""

    def create_hub_repo(self, repo_id: str, *, token: str | None, private: bool, api: Any) -> str: ...

    def push_to_hub(
        self,
        output_dir: str,
        repo_id: str,
        *,
        token: str | None,
        private: bool,
        commit_message: str,
        api: Any,
    ) -> None: ...
