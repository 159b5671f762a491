"""`Trainer`: the one Accelerate training loop behind every script (see `task.py` for the contract).

    trainer = Trainer(training_args, project_name="train_ddpm_redistill")   # Accelerator + seed first
    task = DiffusionDistillationTask(...)                                  # models built after seeding
    result = trainer.train(task)

The same code runs on one CPU, N GPUs or N nodes under ``accelerate launch``. Checkpoints are
accelerate ``save_state`` folders whose models are written by our hooks as safetensors
(``<module>/`` via ``save_pretrained`` for diffusers models), plus the EMA (`ema.ModelEMA`, timm's),
each process's task generator (`checkpointing.GeneratorState`) and the step counter; the data order
is accelerate's seedable sampler (seed + epoch). A resumed run replays exactly the batches, noise
and EMA updates an uninterrupted run would have seen.

`train` reads top to bottom: `_setup` (optimizer, loader, schedule, prepare, EMA), `_resume`
(`resume.py`), `_run_epochs` (one `_step` per optimizer step), `_finish` (final evaluation, save, push). The
trainer knows no Hub or pipeline code: saving and pushing are the task's (`task.py`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainingArguments
from ..interrupts import Interrupted, SignalGuard, at_phase
from . import checkpointing as ckpt
from . import run_checks
from .ema import ModelEMA
from .evaluating import EvaluationHooks
from .losses import check_finite, combine_losses
from .optimization import build_optimizer, scaled_step_rules, validate_training_args
from .resume import CheckpointHooks
from .run_folder import OutputDirClaim
from .task import StepContext

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    global_step: int
    epochs: int
    seconds_per_step: float | None
    output_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None
    last_logs: dict[str, float] = field(default_factory=dict)  # the named losses of the last step
    # wall seconds of setup (+ resume), the training loop (with any evaluations in it) and the final save
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _flat_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Tracker hparams accept scalars only; lists become strings, secrets are dropped (any key naming a
    token) or masked (a token value inside another value)."""
    from ..redaction import drop_secret_keys

    flat = {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in (config or {}).items()
    }
    return drop_secret_keys(flat)


@dataclass
class _Schedule:
    """How many steps, as the prepared (sharded) dataloader will see them."""

    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int


class Trainer(OutputDirClaim, CheckpointHooks, EvaluationHooks):
    """Creates the Accelerator (and seeds everything) on construction; `train(task)` runs the loop.

    Its pieces live beside it: the output folder (`run_folder.OutputDirClaim`), checkpoints and resume
    (`resume.CheckpointHooks`), evaluation (`evaluating.EvaluationHooks`)."""

    def __init__(
        self,
        args: TrainingArguments,
        project_name: str = "redistill",
        config: dict[str, Any] | None = None,
        hub_api: Any = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

        validate_training_args(args)  # output_dir is checked under its lock, in _claim_output_dir
        if args.mixed_precision == "auto":  # from here on, and in the run's config, what it trains in
            args = replace(args, mixed_precision=run_checks.resolve_mixed_precision("auto"))
            logger.info("--mixed_precision auto: %s on this machine", args.mixed_precision)
            if config and "mixed_precision" in config:
                config = {**config, "mixed_precision": args.mixed_precision}
        self.args = args
        self.project_name = project_name
        self.config = config or {}
        self.hub_api = hub_api  # a huggingface_hub.HfApi or a stand-in with create_repo/upload_folder (tests)
        self.hub_repo_id = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
        project_config = ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        )
        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=args.mixed_precision,
            log_with=None if args.logger == "none" else args.logger,
            project_config=project_config,
            # The shuffled order depends only on (seed, epoch), on every process and after a resume.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        )
        self._lock = None
        self._signals: SignalGuard | None = None
        self._stage = "setup"  # setup, training, between_steps, final: where a signal found the run
        self._created_output_dir = not Path(args.output_dir).expanduser().exists()
        self._kept: set[str] = set()  # the user's files this run did not replace (warned once each)
        self._claim_output_dir()
        # SIGTERM / SIGINT from here on stop the run cleanly (see `_interrupted`); until the lock is given up.
        self._signals = SignalGuard().__enter__()
        set_seed(args.seed)
        self.generator = torch.Generator(device=self.accelerator.device)
        self.generator.manual_seed(args.seed * 1009 + self.accelerator.process_index)
        self._generator_state = ckpt.GeneratorState(self.generator, self.accelerator.process_index)
        self.global_step = 0
        self.epoch = 0
        self.ema: ModelEMA | None = None
        self.metrics: dict[str, float] = {}
        self.last_logs: dict[str, float] = {}
        self._names: dict[int, str] = {}
        self._modules: OrderedDict[str, nn.Module] = OrderedDict()

    def _warn(self, message: str | None) -> None:
        """One warning line (`run_checks`), from the main process only."""
        if message and self.accelerator.is_main_process:
            logger.warning("%s", message)

    # ------------------------------------------------------------------ the loop
    def train(self, task) -> TrainResult:
        """Train ``task``; the output_dir lock is released at the end, also on failure. A SIGTERM/SIGINT
        ends it with `Interrupted`, whose message says what was saved and how to resume."""
        self._stage = "setup"
        try:
            return self._train(task)
        except Interrupted as stop:
            raise self._interrupted(stop) from None
        finally:
            self.release_output_dir()

    def _stop_agreed(self) -> bool:
        """Whether a signal asks this run to stop after the current step (on every process alike)."""
        if self._signals is None:
            return False
        if self.accelerator.num_processes == 1:
            return self._signals.pending
        if self._signals.pending:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release_output_dir()

    def _train(self, task) -> TrainResult:
        start = time.perf_counter()
        self._setup(task)
        resume_path = self._resume()
        at_phase("after_setup")
        self._stage = "training"
        loop_start = time.perf_counter()
        step_times = self._run_epochs(task)
        final_start = time.perf_counter()
        self._finish(task)
        phases = {"setup": loop_start - start, "training": final_start - loop_start}
        phases["final_samples_and_save"] = time.perf_counter() - final_start
        # The first step includes warm-up work (allocations); report the median of the rest.
        timed = sorted(step_times[1:] or step_times)
        return TrainResult(
            global_step=self.global_step,
            epochs=self.epoch + 1,
            seconds_per_step=timed[len(timed) // 2] if timed else None,
            output_dir=self.args.output_dir,
            metrics=dict(self.metrics),
            resumed_from=str(resume_path) if resume_path else None,
            last_logs=dict(self.last_logs),
            phase_seconds={k: round(v, 1) for k, v in phases.items()},
        )

    def _setup(self, task) -> None:
        """(--push_to_hub) the Hub repo; the task's modules, the optimizer, the loader and the lr
        schedule, prepared by accelerate; the EMA, the checkpoint hooks and the trackers."""
        accelerator, args = self.accelerator, self.args
        self._create_hub_repo(task)  # first: a bad token or repo name stops the run before any work
        self._warn(run_checks.mixed_precision_warning(args.mixed_precision, accelerator.device.type))
        if hasattr(task, "setup"):
            task.setup(accelerator)
        modules = OrderedDict(task.trainable_modules())
        if task.main_module_name not in modules:
            raise ValueError(f"Task's main module {task.main_module_name!r} is not among {list(modules)}.")
        self._params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        if not self._params:
            raise ValueError("The task has no trainable parameters.")
        optimizer, dataloader, lr_scheduler = self._optimizer_loader_schedule(task)
        self._prepare(task, modules, optimizer, dataloader, lr_scheduler)
        if args.use_ema:
            self.ema = ModelEMA(
                self._main_module,
                decay=args.ema_max_decay,
                min_decay=args.ema_min_decay,
                use_warmup=args.ema_warmup,
                inv_gamma=args.ema_inv_gamma,
                power=args.ema_power,
            )
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)
        if accelerator.is_main_process and args.logger != "none":
            with self._recording():
                accelerator.init_trackers(self.project_name, config=_flat_config(self.config))

    def _optimizer_loader_schedule(self, task):
        """The optimizer of ``self._params``, the shuffling loader and the lr schedule (not prepared yet)."""
        from diffusers.optimization import get_scheduler

        accelerator, args = self.accelerator, self.args
        learning_rate = args.learning_rate
        if args.scale_lr:
            learning_rate *= (
                args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
            )
        optimizer = build_optimizer(args, self._params, learning_rate)

        dataset = task.train_dataset()
        if len(dataset) == 0:
            raise ValueError(
                "The training dataset is empty; check --dataset_name, --data_files or --train_data_dir."
            )
        self._warn(
            run_checks.small_dataset_warning(len(dataset), args.train_batch_size, accelerator.num_processes)
        )
        dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.train_batch_size,
            shuffle=True,  # accelerate's prepare makes it a SeedableRandomSampler (see __init__)
            collate_fn=getattr(task, "collate_fn", None),
            num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(args.seed),  # keeps DataLoader off the global RNG
        )
        batches_per_epoch = math.ceil(
            math.ceil(len(dataset) / args.train_batch_size) / accelerator.num_processes
        )
        steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
        self._schedule = _Schedule(
            steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch)
        )
        lr_scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max_train_steps * accelerator.num_processes,
            step_rules=scaled_step_rules(getattr(args, "lr_step_rules", None), accelerator.num_processes),
        )
        return optimizer, dataloader, lr_scheduler

    def _prepare(self, task, modules, optimizer, dataloader, lr_scheduler) -> None:
        """accelerate's prepare; the prepared modules by name, and the unwrapped main module."""
        accelerator = self.accelerator
        # Only modules with trainable parameters go through prepare (DDP refuses the others).
        trainable_names = [n for n, m in modules.items() if any(p.requires_grad for p in m.parameters())]
        *prepared, self.optimizer, self.dataloader, self.lr_scheduler = accelerator.prepare(
            *[modules[n] for n in trainable_names], optimizer, dataloader, lr_scheduler
        )
        for name, module in modules.items():
            if name not in trainable_names:
                module.to(accelerator.device)
        self._modules = OrderedDict(
            (n, prepared[trainable_names.index(n)] if n in trainable_names else modules[n]) for n in modules
        )
        self._trainable = [self._modules[n] for n in trainable_names]
        self._names = {id(m): n for n, m in self._modules.items()}
        self._main_module = accelerator.unwrap_model(self._modules[task.main_module_name])

    def _epoch_batches(self, epoch: int, first_epoch: int):
        """The loader of ``epoch``; in the epoch a resumed run starts in, without the batches done."""
        self.dataloader.set_epoch(epoch)
        skip = (self.global_step % self._schedule.steps_per_epoch) * self.args.gradient_accumulation_steps
        if epoch != first_epoch or not skip:
            return self.dataloader
        loader = self.accelerator.skip_first_batches(self.dataloader, skip)
        loader.set_epoch(epoch)  # a new loader would otherwise start its own count at epoch 0
        return loader

    def _run_epochs(self, task) -> list[float]:
        """Train from ``global_step`` to the last step; returns the seconds each optimizer step took."""
        from tqdm.auto import tqdm

        args, schedule = self.args, self._schedule
        progress = tqdm(
            total=schedule.max_train_steps,
            initial=self.global_step,
            desc="Steps",
            disable=not self.accelerator.is_local_main_process,
        )
        ctx = StepContext(
            modules=self._modules,
            generator=self.generator,
            device=self.accelerator.device,
            global_step=self.global_step,
            accelerator=self.accelerator,
        )
        step_times: list[float] = []
        tick = time.perf_counter()
        first_epoch = self.global_step // schedule.steps_per_epoch
        try:  # closed on every way out, so a last one-line message starts on its own line
            for epoch in range(first_epoch, schedule.num_epochs):
                if self.global_step >= schedule.max_train_steps:
                    break
                self.epoch = epoch
                for module in self._modules.values():
                    module.train()
                for batch in self._epoch_batches(epoch, first_epoch):
                    ctx.global_step = self.global_step
                    with self._signals.deferring() if self._signals else contextlib.nullcontext():
                        logs = self._step(task, batch, ctx)  # a first signal lets the step finish
                    if logs is None:  # a micro-batch of gradient accumulation
                        continue
                    now = time.perf_counter()
                    step_times.append(now - tick)
                    tick = now
                    progress.update(1)
                    progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                    if args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0:
                        self.save_checkpoint()
                    if self._stop_agreed():
                        self._stage = "between_steps"
                        raise Interrupted(self._signals.received or 15)
                    if self._due(args.validation_steps, self.global_step):
                        self._evaluate(task)
                        tick = time.perf_counter()
                    if self.global_step >= schedule.max_train_steps:
                        break
                if self._due(args.validation_epochs, epoch + 1):
                    self._evaluate(task)
                    tick = time.perf_counter()
        finally:
            progress.close()
        return step_times

    def _step(self, task, batch, ctx: StepContext) -> dict[str, float] | None:
        """One micro-batch; the logged scalars when it completed an optimizer step, else None."""
        accelerator, args = self.accelerator, self.args
        with accelerator.accumulate(*self._trainable):
            with accelerator.autocast():
                losses = task.compute_losses(batch, ctx)
            at_phase("mid_step")
            total = combine_losses(
                losses.task, losses.distillation, args.distill_weight, getattr(args, "task_weight", None)
            )
            check_finite(total, {"task": losses.task, **losses.distillation}, self.global_step)
            accelerator.backward(total)
            if accelerator.sync_gradients and args.max_grad_norm:
                accelerator.clip_grad_norm_(self._params, args.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            return None
        self.global_step += 1
        logs = {
            "loss": total.detach().item(),
            "loss/task": losses.task.detach().item(),
            "lr": self.lr_scheduler.get_last_lr()[0],
        }
        logs.update({f"loss/{k}": v.detach().item() for k, v in losses.distillation.items()})
        logs.update(losses.logs)
        if self.ema is not None:
            self.ema.update(self._main_module, step=self.global_step)
            logs["ema_decay"] = self.ema.get_decay(self.global_step)
        accelerator.log(logs, step=self.global_step)
        self.last_logs = logs
        return logs

    def _finish(self, task) -> None:
        """The final evaluation, the task's artefact (EMA weights) and --push_to_hub, then end the trackers."""
        accelerator, args = self.accelerator, self.args
        accelerator.wait_for_everyone()
        if getattr(task, "final_samples", True):  # --no_final_samples skips the end-of-training grid
            self._evaluate(task)
        self._stage = "final"
        if accelerator.is_main_process:
            try:
                with self.ema_weights(), self._staged(final=True) as where:
                    task.save_final(str(where), self._eval_context(where))
            except Exception as error:
                problem = ckpt.write_failure(error, Path(args.output_dir))
                if problem is None:
                    raise
                raise OSError(
                    f"{problem} while saving the final model in {args.output_dir} (nothing of it was kept); "
                    f"{ckpt.write_failure_advice(problem, args)}, then run the same command with "
                    "--resume_from_checkpoint latest to finish it."
                ) from error
            if args.push_to_hub:
                self._push(task)
        accelerator.wait_for_everyone()
        accelerator.end_training()

    def _push(self, task) -> None:
        args = self.args
        try:
            task.push_to_hub(
                args.output_dir,
                self.hub_repo_id,
                token=args.hub_token,
                private=args.hub_private_repo,
                commit_message=f"End of training (step {self.global_step})",
                api=self.hub_api,
            )
        # Network and Hub failures (`hub.HubUnavailableError`) are OSErrors; the trained model is safe.
        except OSError as error:
            from ..hub import upload_command

            raise OSError(
                f"Training finished and the model is saved in {args.output_dir}, but --push_to_hub to "
                f"{self.hub_repo_id} failed ({' '.join(str(error).split())}); upload it later with "
                f"`{upload_command(self.hub_repo_id, args.output_dir)}`."
            ) from error
