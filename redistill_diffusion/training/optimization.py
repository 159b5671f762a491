"""What the loop is given before it is built: the optimizer (`build_optimizer`), the step rules of a
piecewise-constant schedule in scheduler steps (`scaled_step_rules`) and the one-line errors for training
settings that cannot train (`validate_training_args`)."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from ..config import TrainingArguments


def build_optimizer(
    args: TrainingArguments, params: list[nn.Parameter], learning_rate: float
) -> torch.optim.Optimizer:
    if args.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=learning_rate,
            momentum=args.sgd_momentum,
            weight_decay=args.sgd_weight_decay,
            nesterov=args.sgd_nesterov,
        )
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(
        params,
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def scaled_step_rules(rules: str | None, num_processes: int) -> str | None:
    """piecewise_constant rules given in optimizer steps -> scheduler steps (accelerate steps the
    scheduler once per process for every optimizer step)."""
    if not rules:
        return None
    try:
        *pairs, last = rules.split(",")
        scaled = [f"{mult}:{int(step) * num_processes}" for mult, step in (pair.split(":") for pair in pairs)]
        float(last)
    except ValueError:
        raise ValueError(f"--lr_step_rules {rules!r} must look like '1:3000,0.1:6000,0.01'.") from None
    return ",".join([*scaled, last])


def validate_training_args(args: TrainingArguments) -> None:
    """One-line errors for settings that cannot train, before anything is built."""
    positive = {
        "train_batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_epochs": args.num_epochs,
    }
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}.")
    if args.max_train_steps is not None and args.max_train_steps < 1:
        raise ValueError(f"--max_train_steps must be at least 1, got {args.max_train_steps}.")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate}.")
    if not 0.0 <= args.distill_weight <= 1.0:
        raise ValueError(f"--distill_weight must lie in [0, 1], got {args.distill_weight}.")
    task_weight = getattr(args, "task_weight", None)
    if task_weight is not None and not (math.isfinite(task_weight) and task_weight > 0):
        raise ValueError(
            f"--task_weight must be a positive number, got {task_weight}; leave it out for the default "
            "(1 - --distill_weight with a distillation loss, 1 without)."
        )
    step_rules = getattr(args, "lr_step_rules", None)
    if args.lr_scheduler == "piecewise_constant" and not step_rules:
        raise ValueError(
            "--lr_scheduler piecewise_constant (a step schedule) needs --lr_step_rules, e.g. '1:3000,0.1:6000,0.01'."
        )
    scaled_step_rules(step_rules, 1)  # malformed rules fail here, before any work
    if args.checkpointing_steps < 0:
        raise ValueError("--checkpointing_steps must be >= 0 (0 disables checkpoints).")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(
            f"--checkpoints_total_limit must be at least 1 (it keeps the newest N checkpoints), got "
            f"{args.checkpoints_total_limit}; leave it out to keep every checkpoint."
        )
    if args.push_to_hub and not (args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))):
        raise ValueError("--push_to_hub needs --hub_model_id.")
