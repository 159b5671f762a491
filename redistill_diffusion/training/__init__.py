"""One Accelerate training loop (`Trainer`) shared by every script, and the tasks that plug into it.

`Trainer(training_args).train(task) -> TrainResult`. Import a task's contract from here: `TrainingTask`, `TaskLosses`, `StepContext`, `EvalContext`;
and `combine_losses`, the single place where task and distillation losses are weighted.
"""

from .losses import NonFiniteLossError, check_finite, combine_losses
from .task import EvalContext, HubPublishingTask, StepContext, TaskLosses, TrainingTask
from .trainer import Trainer, TrainResult

__all__ = [
    "EvalContext",
    "HubPublishingTask",
    "NonFiniteLossError",
    "StepContext",
    "TaskLosses",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "check_finite",
    "combine_losses",
]
