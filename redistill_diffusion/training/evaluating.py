"""Evaluation inside a `Trainer` run: EMA weights swapped in, the task's `evaluate` and when it is due.

`EvaluationHooks` is a mixin of `trainer.Trainer`; it uses the trainer's ``args``, ``accelerator``,
``global_step``, ``epoch``, ``ema``, ``metrics``, ``_modules``, ``_main_module``, ``_schedule`` and ``_staged``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .task import EvalContext


class EvaluationHooks:
    """Sample grids and metrics during and after training (see the module docstring)."""

    def ema_weights(self):
        """Swap the EMA weights (and statistics) into the main module for sampling / saving, then restore."""
        if self.ema is None:
            return contextlib.nullcontext()
        return self.ema.swapped_into(self._main_module)

    def _eval_context(self, write_to: Path | None = None) -> EvalContext:
        return EvalContext(
            modules={name: self.accelerator.unwrap_model(m) for name, m in self._modules.items()},
            device=self.accelerator.device,
            global_step=self.global_step,
            epoch=self.epoch,
            output_dir=str(write_to or self.args.output_dir),
            accelerator=self.accelerator,
            metrics=dict(self.metrics),
            run_dir=self.args.output_dir,
        )

    def _evaluate(self, task) -> None:
        accelerator = self.accelerator
        if hasattr(task, "evaluate") and accelerator.is_main_process:
            # fork_rng: evaluation must not move the training RNG streams (exact resume).
            with (
                torch.random.fork_rng(devices=[]),
                self.ema_weights(),
                torch.no_grad(),
                self._staged() as where,
            ):
                metrics = task.evaluate(self._eval_context(where)) or {}
            self.metrics.update(metrics)
            if metrics:
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.global_step)
        for module in self._modules.values():
            module.train()  # evaluation may switch modes; training must go on exactly as before
        accelerator.wait_for_everyone()

    def _due(self, every: int | None, count: int) -> bool:
        """An evaluation every ``every`` steps/epochs, except at the end (`_finish` evaluates then)."""
        return bool(every) and count % every == 0 and self.global_step < self._schedule.max_train_steps
