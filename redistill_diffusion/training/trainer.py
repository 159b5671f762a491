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

`train` reads top to bottom: `_setup` (optimizer, loader, schedule, prepare, EMA), `_resume`,
`_run_epochs` (one `_step` per optimizer step), `_finish` (final evaluation, save, push). The
trainer knows no Hub or pipeline code: saving and pushing are the task's (`task.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..config import TrainingArguments
from ..files import ensure_output_dir
from ..interrupts import Interrupted, SignalGuard, at_phase
from . import checkpointing as ckpt
from . import outputs, run_checks
from .ema import ModelEMA
from .losses import check_finite, combine_losses
from .optimization import build_optimizer, scaled_step_rules, validate_training_args
from .task import EvalContext, HubPublishingTask, StepContext

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


class Trainer:
    """Creates the Accelerator (and seeds everything) on construction; `train(task)` runs the loop."""

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

    # ------------------------------------------------------------------ output_dir
    def _on_main_process(self, action) -> None:
        """Run ``action`` on the main process; a user error it raises reaches every process as the
        same error, so none is left waiting for the others."""
        from accelerate.utils import broadcast_object_list

        from ..errors import USER_ERRORS, one_line

        error = None
        if self.accelerator.is_main_process:
            try:
                action()
            except USER_ERRORS as caught:
                error = caught
        message = [one_line(error) if error is not None else None]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(message)
        if error is not None:
            raise error
        if message[0] is not None:
            raise ValueError(message[0])
        self.accelerator.wait_for_everyone()

    def _claim_output_dir(self) -> None:
        """Main process: lock output_dir, check it again under the lock (two runs started at once) and
        clear the previous run for --overwrite_output_dir."""
        args = self.args

        def claim() -> None:
            try:
                ensure_output_dir(args.output_dir)
                self._lock = outputs.lock_output_dir(args.output_dir)
                ckpt.check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
                if args.overwrite_output_dir and not args.resume_from_checkpoint:
                    outputs.check_no_foreign_model(args.output_dir)
                    outputs.remove_previous_run(args.output_dir)
            except BaseException:
                self.release_output_dir()
                raise

        self._on_main_process(claim)

    def _create_hub_repo(self, task) -> None:
        """--push_to_hub: the task creates the repo now (credentials, names), not after hours of training."""
        args = self.args
        if not args.push_to_hub:
            return
        if not isinstance(task, HubPublishingTask):
            raise ValueError(
                f"--push_to_hub: {type(task).__name__} cannot push to the Hub (no push_to_hub hook)."
            )

        def create() -> None:
            from ..hub import HubUnavailableError, upload_command

            try:
                self.hub_repo_id = task.create_hub_repo(
                    self.hub_repo_id, token=args.hub_token, private=args.hub_private_repo, api=self.hub_api
                )
            except HubUnavailableError as error:
                raise HubUnavailableError(
                    f"--push_to_hub: {error}; log in with `hf auth login` (or set HF_TOKEN) and check the "
                    "network, or train without --push_to_hub and upload the saved model later with "
                    f"`{upload_command(self.hub_repo_id, args.output_dir)}`."
                ) from None

        self._on_main_process(create)

    def release_output_dir(self) -> None:
        """Give up the output_dir lock and remove its file (the OS also releases the lock when the process
        ends), restore the previous signal handlers, and remove output_dir again if this run created it
        and left nothing in it (a run refused early)."""
        signals = getattr(self, "_signals", None)
        if signals is not None:
            signals.__exit__(None, None, None)
            self._signals = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            if self._created_output_dir:
                with contextlib.suppress(OSError):  # not empty: the run wrote something, it stays
                    Path(self.args.output_dir).rmdir()

    def _recording(self):
        """Files written inside this block are recorded as this run's outputs (main process)."""
        return outputs.recording(self.args.output_dir, enabled=self.accelerator.is_main_process)

    def _staged(self, final: bool = False):
        """Outputs written into the yielded folder are committed to output_dir when the block succeeds
        (recorded first, a user's file never replaced: `outputs.staged`); dropped if it fails."""
        on_commit = (lambda name: at_phase("final_save")) if final else None
        return outputs.staged(self.args.output_dir, kept=self._kept, on_commit=on_commit)

    # ------------------------------------------------------------------ checkpoint hooks
    def _save_hook(self, models, weights, output_dir):
        """Diffusers modules -> ``<name>/`` with save_pretrained (safetensors); EMA and generator too."""
        accelerator = self.accelerator
        keep = []
        for model, weight in zip(models, weights):
            unwrapped = accelerator.unwrap_model(model)
            name = self._names.get(id(model))
            if name is not None and hasattr(unwrapped, "save_pretrained") and hasattr(unwrapped, "config"):
                if accelerator.is_main_process:
                    unwrapped.save_pretrained(os.path.join(output_dir, name), safe_serialization=True)
            else:
                keep.append(weight)
        weights[:] = keep
        self._generator_state.save(output_dir)  # every process: its own noise stream
        if accelerator.is_main_process and self.ema is not None:
            self.ema.save(output_dir)

    def _load_hook(self, models, input_dir):
        accelerator = self.accelerator
        remaining = []
        for model in models:
            unwrapped = accelerator.unwrap_model(model)
            name = self._names.get(id(model))
            folder = os.path.join(input_dir, name) if name else None
            if folder and os.path.isdir(folder) and hasattr(unwrapped, "save_pretrained"):
                # Not from_pretrained: the prepared module must keep its identity (DDP, optimizer).
                files = sorted(Path(folder).glob("*.safetensors"))
                if not files:
                    raise FileNotFoundError(f"Checkpoint {input_dir}: {name}/ has no safetensors weights.")
                state = {}
                for file in files:
                    state.update(load_file(str(file), device=str(accelerator.device)))
                unwrapped.load_state_dict(state)
            else:
                remaining.append(model)
        models[:] = remaining
        self._generator_state.load(input_dir)
        if self.ema is not None:
            self.ema.load(input_dir)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>`` atomically (all processes call this). A first SIGTERM/SIGINT waits
        for the save to finish; a failed or abandoned save leaves no ``.tmp`` behind, and a full disk or
        an unwritable folder is one line saying what to do."""
        tmp_dir = ckpt.temporary_checkpoint_dir(self.args.output_dir, self.global_step)
        try:
            with self._signals.deferring() if self._signals else contextlib.nullcontext():
                return self._save_checkpoint(tmp_dir)
        except BaseException as error:
            problem = ckpt.write_failure(error, tmp_dir) if isinstance(error, Exception) else None
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp_dir, ignore_errors=True)
            if problem is not None:
                raise OSError(
                    ckpt.write_failure_message(problem, self.args, tmp_dir.name[: -len(ckpt.TMP_SUFFIX)])
                ) from error
            raise

    def _save_checkpoint(self, tmp_dir: Path) -> Path:
        accelerator, args = self.accelerator, self.args
        final_dir = ckpt.final_checkpoint_dir(args.output_dir, self.global_step)
        if accelerator.is_main_process:
            ckpt.remove_stale_temporaries(args.output_dir)
            tmp_dir.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp_dir), safe_serialization=True)
        at_phase("checkpoint_save")
        if accelerator.is_main_process:  # the completion marker, written last
            state = {"global_step": self.global_step, "epoch": self.epoch, **self._data_order_settings()}
            with open(tmp_dir / ckpt.STATE_FILE, "w") as handle:
                json.dump(state, handle)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.commit_checkpoint(tmp_dir, final_dir)
            removed = ckpt.prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
            logger.info("Saved %s%s", final_dir, f" (removed {len(removed)} old)" if removed else "")
        accelerator.wait_for_everyone()
        return final_dir

    def _data_order_settings(self) -> dict[str, int]:
        """What fixes the data order (`run_checks.DATA_ORDER_SETTINGS`), recorded in every checkpoint."""
        return {
            "train_batch_size": self.args.train_batch_size,
            "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
            "num_processes": self.accelerator.num_processes,
        }

    def _warn(self, message: str | None) -> None:
        """One warning line (`run_checks`), from the main process only."""
        if message and self.accelerator.is_main_process:
            logger.warning("%s", message)

    # ------------------------------------------------------------------ EMA and evaluation
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

    def _interrupted(self, stop: Interrupted) -> Interrupted:
        """Save a checkpoint of the current step when checkpointing is on and none exists yet (after a
        step, every process together; elsewhere, single-process runs only), then say how to go on."""
        args = self.args
        name = stop.signal_name
        where = {
            "setup": "before the first step",
            "final": f"while saving the final model in {args.output_dir}",
        }.get(self._stage, f"at step {self.global_step}")
        latest = ckpt.find_latest_checkpoint(args.output_dir)
        saved_now = False
        agreed = self._stage == "between_steps" or self.accelerator.num_processes == 1
        if args.checkpointing_steps and self.global_step > 0 and agreed:
            if latest is None or latest.name != f"{ckpt.CHECKPOINT_PREFIX}{self.global_step}":
                try:
                    latest = self.save_checkpoint()
                    saved_now = True
                except (Interrupted, OSError) as error:  # a second signal, a full disk: keep the older one
                    logger.warning("No checkpoint at step %d: %s", self.global_step, error)
                    latest = ckpt.find_latest_checkpoint(args.output_dir)
        finish = "to finish it" if self._stage == "final" else "to continue"
        if latest is not None:
            what = f"saved {latest.name}" if saved_now else f"the newest checkpoint is {latest.name}"
            how = f"run the same command with --resume_from_checkpoint latest {finish}."
        else:
            what = "no checkpoint" + (" (--checkpointing_steps 0)" if not args.checkpointing_steps else "")
            how = "run the same command with --overwrite_output_dir to start over."
        return Interrupted(stop.signum, f"interrupted by {name} {where}: {what}; {how}")

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

    def _resume(self) -> Path | None:
        """--resume_from_checkpoint: load the checkpoint (models, optimizer, schedule, RNGs, EMA,
        generators) and the step it was saved at; None for a new run."""
        accelerator, args = self.accelerator, self.args
        resume_path = ckpt.resolve_resume_path(args.output_dir, args.resume_from_checkpoint)
        if args.resume_from_checkpoint and resume_path is None:
            logger.warning("No checkpoint in %s yet; starting a new run.", args.output_dir)
        if resume_path is None:
            return None
        with open(resume_path / ckpt.STATE_FILE) as handle:
            saved = json.load(handle)
        self._warn(run_checks.resume_mismatch_warning(resume_path.name, saved, self._data_order_settings()))
        try:
            accelerator.load_state(str(resume_path))
        except (RuntimeError, KeyError, ValueError, OSError) as error:  # e.g. another model's weights
            raise ValueError(
                f"Checkpoint {resume_path} does not fit this run ({' '.join(str(error).split())[:300]}); "
                "resume with the flags it was saved with, or start over with --overwrite_output_dir."
            ) from error
        self.global_step = int(saved["global_step"])
        return resume_path

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

    def _due(self, every: int | None, count: int) -> bool:
        """An evaluation every ``every`` steps/epochs, except at the end (`_finish` evaluates then)."""
        return bool(every) and count % every == 0 and self.global_step < self._schedule.max_train_steps

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
