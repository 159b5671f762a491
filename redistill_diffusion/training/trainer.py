"""`Trainer`: the one Accelerate training loop behind every script (see `task.py` for the contract).

    trainer = Trainer(training_args, project_name="train_ddpm_redistill")   # Accelerator + seed first
    task = DiffusionDistillationTask(...)                                  # models built after seeding
    result = trainer.train(task)

The same code runs on one CPU, N GPUs or N nodes under ``accelerate launch``. Checkpoints are
accelerate ``save_state`` folders whose models are written by our hooks as safetensors
(``<module>/`` via ``save_pretrained`` for diffusers models), plus the EMA, the task generators and
the step counter; a resumed run replays exactly the batches, noise and EMA updates an uninterrupted
run would have seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import TrainingArguments
from ..data import EpochSeededSampler
from ..files import ensure_output_dir
from . import checkpointing as ckpt
from . import outputs
from .losses import check_finite, combine_losses
from .task import EvalContext, StepContext

logger = logging.getLogger(__name__)

EMA_DIR = "ema"
GENERATOR_FILE = "generator_state_{rank}.safetensors"


@dataclass
class TrainResult:
    global_step: int
    epochs: int
    seconds_per_step: float | None
    output_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None
    last_logs: dict[str, float] = field(default_factory=dict)  # the named losses of the last step


def _flat_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """Tracker hparams accept scalars only; lists become strings, secrets are dropped."""
    flat = {}
    for key, value in (config or {}).items():
        if key == "hub_token":
            continue
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


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


def _scaled_step_rules(rules: str | None, num_processes: int) -> str | None:
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
    step_rules = getattr(args, "lr_step_rules", None)
    if args.lr_scheduler == "piecewise_constant" and not step_rules:
        raise ValueError(
            "--lr_scheduler piecewise_constant (a step schedule) needs --lr_step_rules, e.g. '1:3000,0.1:6000,0.01'."
        )
    _scaled_step_rules(step_rules, 1)  # malformed rules fail here, before any work
    if args.checkpointing_steps < 0:
        raise ValueError("--checkpointing_steps must be >= 0 (0 disables checkpoints).")
    if args.push_to_hub and not (args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))):
        raise ValueError("--push_to_hub needs --hub_model_id.")


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
        from accelerate.utils import ProjectConfiguration, set_seed

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
        )
        self._lock = None
        self._claim_output_dir()
        set_seed(args.seed)
        self.generator = torch.Generator(device=self.accelerator.device)
        self.generator.manual_seed(args.seed * 1009 + self.accelerator.process_index)
        self.global_step = 0
        self.epoch = 0
        self.ema = None
        self.ema_buffers: dict[str, torch.Tensor] = {}
        self.metrics: dict[str, float] = {}
        self.last_logs: dict[str, float] = {}
        self._names: dict[int, str] = {}

    # ------------------------------------------------------------------ output_dir
    def _claim_output_dir(self) -> None:
        """Main process: lock output_dir, check it again under the lock (two runs started at once),
        clear the previous run for --overwrite_output_dir and create the Hub repo. A failure reaches
        every process as the same error, so none is left waiting for the others."""
        from accelerate.utils import broadcast_object_list

        from ..errors import USER_ERRORS, one_line

        args, accelerator = self.args, self.accelerator
        error = None
        if accelerator.is_main_process:
            try:
                ensure_output_dir(args.output_dir)
                self._lock = outputs.lock_output_dir(args.output_dir)
                ckpt.check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
                if args.overwrite_output_dir and not args.resume_from_checkpoint:
                    outputs.remove_previous_run(args.output_dir)
                if args.push_to_hub:  # fail on credentials / names now, not after hours of training
                    from ..hub import create_hub_repo

                    self.hub_repo_id = create_hub_repo(
                        self.hub_repo_id, token=args.hub_token, private=args.hub_private_repo, api=self.hub_api
                    )
            except USER_ERRORS as caught:
                self.release_output_dir()
                error = caught
        message = [one_line(error) if error is not None else None]
        if accelerator.num_processes > 1:
            broadcast_object_list(message)
        if error is not None:
            raise error
        if message[0] is not None:
            raise ValueError(message[0])
        accelerator.wait_for_everyone()

    def release_output_dir(self) -> None:
        """Give up the output_dir lock (also released by the OS when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _recording(self):
        """Files written inside this block are recorded as this run's outputs (main process)."""
        return outputs.recording(self.args.output_dir, enabled=self.accelerator.is_main_process)

    # ------------------------------------------------------------------ checkpoint hooks
    def _save_hook(self, models, weights, output_dir):
        """Diffusers modules -> ``<name>/`` with save_pretrained (safetensors); EMA, step and generator too."""
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
        rank = accelerator.process_index
        save_file(
            {"state": self.generator.get_state()}, os.path.join(output_dir, GENERATOR_FILE.format(rank=rank))
        )
        if accelerator.is_main_process:
            if self.ema is not None:
                ema_dir = os.path.join(output_dir, EMA_DIR)
                os.makedirs(ema_dir, exist_ok=True)
                state = self.ema.state_dict()
                shadow = state.pop("shadow_params")
                save_file(
                    {name: p.detach().contiguous().cpu() for name, p in zip(self._main_param_names, shadow)},
                    os.path.join(ema_dir, "ema_shadow_params.safetensors"),
                )
                if self.ema_buffers:
                    save_file(
                        {name: b.contiguous().cpu() for name, b in self.ema_buffers.items()},
                        os.path.join(ema_dir, "ema_buffers.safetensors"),
                    )
                with open(os.path.join(ema_dir, "ema_state.json"), "w") as handle:
                    json.dump(state, handle)

    def _load_hook(self, models, input_dir):
        accelerator = self.accelerator
        remaining = []
        for model in models:
            unwrapped = accelerator.unwrap_model(model)
            name = self._names.get(id(model))
            folder = os.path.join(input_dir, name) if name else None
            if folder and os.path.isdir(folder) and hasattr(unwrapped, "save_pretrained"):
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
        generator_file = os.path.join(input_dir, GENERATOR_FILE.format(rank=accelerator.process_index))
        if os.path.isfile(generator_file):
            self.generator.set_state(load_file(generator_file)["state"])
        if self.ema is not None:
            ema_dir = os.path.join(input_dir, EMA_DIR)
            if not os.path.isdir(ema_dir):
                raise FileNotFoundError(
                    f"Checkpoint {input_dir} has no EMA state; resume with --no_use_ema or from another checkpoint."
                )
            with open(os.path.join(ema_dir, "ema_state.json")) as handle:
                state = json.load(handle)
            shadow = load_file(
                os.path.join(ema_dir, "ema_shadow_params.safetensors"), device=str(accelerator.device)
            )
            state["shadow_params"] = [shadow[name] for name in self._main_param_names]
            self.ema.load_state_dict(state)
            buffers_file = os.path.join(ema_dir, "ema_buffers.safetensors")
            if self.ema_buffers and os.path.isfile(buffers_file):
                saved = load_file(buffers_file, device=str(accelerator.device))
                self.ema_buffers = {name: saved[name] for name in self.ema_buffers}

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoint-<step>`` atomically (all processes call this)."""
        accelerator, args = self.accelerator, self.args
        tmp_dir = ckpt.temporary_checkpoint_dir(args.output_dir, self.global_step)
        final_dir = ckpt.final_checkpoint_dir(args.output_dir, self.global_step)
        if accelerator.is_main_process:
            ckpt.remove_stale_temporaries(args.output_dir)
            tmp_dir.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp_dir), safe_serialization=True)
        if accelerator.is_main_process:  # the completion marker, written last
            state = {
                "global_step": self.global_step,
                "epoch": self.epoch,
                "num_processes": accelerator.num_processes,
            }
            with open(tmp_dir / ckpt.STATE_FILE, "w") as handle:
                json.dump(state, handle)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            ckpt.commit_checkpoint(tmp_dir, final_dir)
            removed = ckpt.prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
            logger.info("Saved %s%s", final_dir, f" (removed {len(removed)} old)" if removed else "")
        accelerator.wait_for_everyone()
        return final_dir

    # ------------------------------------------------------------------ EMA helpers
    @contextlib.contextmanager
    def ema_weights(self):
        """Swap the EMA weights into the main module for sampling / saving, then restore."""
        if self.ema is None:
            yield
            return
        params = list(self._main_module.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        buffers = self._floating_buffers()
        live_buffers = {name: buffer.detach().clone() for name, buffer in buffers.items()}
        for name, buffer in buffers.items():
            buffer.data.copy_(self.ema_buffers[name])
        try:
            yield
        finally:
            self.ema.restore(params)
            for name, buffer in buffers.items():
                buffer.data.copy_(live_buffers[name])

    def _floating_buffers(self) -> dict[str, torch.Tensor]:
        """BatchNorm running statistics and other float buffers of the main module."""
        return {name: b for name, b in self._main_module.named_buffers() if b.is_floating_point()}

    @torch.no_grad()
    def _ema_step_buffers(self) -> None:
        # diffusers' EMAModel averages parameters only. Float buffers (BatchNorm running stats, in RED
        # blocks and timm models) are averaged with the same decay, as timm's ModelEma does: EMA
        # weights paired with the raw model's running stats normalise wrongly (washed-out samples).
        decay = self.ema.cur_decay_value
        for name, buffer in self._floating_buffers().items():
            self.ema_buffers[name].mul_(decay).add_(buffer.detach(), alpha=1.0 - decay)

    def _eval_context(self) -> EvalContext:
        return EvalContext(
            modules={name: self.accelerator.unwrap_model(m) for name, m in self._modules.items()},
            device=self.accelerator.device,
            global_step=self.global_step,
            epoch=self.epoch,
            output_dir=self.args.output_dir,
            accelerator=self.accelerator,
            metrics=dict(self.metrics),
        )

    def _evaluate(self, task) -> None:
        accelerator = self.accelerator
        if hasattr(task, "evaluate") and accelerator.is_main_process:
            # fork_rng: evaluation must not move the training RNG streams (exact resume).
            with torch.random.fork_rng(devices=[]), self.ema_weights(), torch.no_grad(), self._recording():
                metrics = task.evaluate(self._eval_context()) or {}
            self.metrics.update(metrics)
            if metrics:
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.global_step)
        for module in getattr(self, "_modules", {}).values():
            module.train()  # evaluation may switch modes; training must go on exactly as before
        accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ the loop
    def train(self, task) -> TrainResult:
        """Train ``task``; the output_dir lock is released at the end, also on failure."""
        try:
            return self._train(task)
        finally:
            self.release_output_dir()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release_output_dir()

    def _train(self, task) -> TrainResult:
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel
        from tqdm.auto import tqdm

        accelerator, args = self.accelerator, self.args
        if hasattr(task, "setup"):
            task.setup(accelerator)
        modules = OrderedDict(task.trainable_modules())
        if task.main_module_name not in modules:
            raise ValueError(f"Task's main module {task.main_module_name!r} is not among {list(modules)}.")
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        if not params:
            raise ValueError("The task has no trainable parameters.")
        learning_rate = args.learning_rate
        if args.scale_lr:
            learning_rate *= (
                args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
            )
        optimizer = build_optimizer(args, params, learning_rate)

        dataset = task.train_dataset()
        if len(dataset) == 0:
            raise ValueError("The training dataset is empty; check the dataset flags.")
        sampler = EpochSeededSampler(len(dataset), seed=args.seed)
        dataloader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.train_batch_size,
            sampler=sampler,
            collate_fn=getattr(task, "collate_fn", None),
            num_workers=args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(
                args.seed
            ),  # keeps DataLoader from drawing on the global RNG
        )
        # Steps per epoch as the prepared (sharded) dataloader will see them.
        batches_per_epoch = math.ceil(
            math.ceil(len(dataset) / args.train_batch_size) / accelerator.num_processes
        )
        steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
        num_epochs = math.ceil(max_train_steps / steps_per_epoch)
        lr_scheduler = get_scheduler(
            args.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=max_train_steps * accelerator.num_processes,
            step_rules=_scaled_step_rules(getattr(args, "lr_step_rules", None), accelerator.num_processes),
        )

        # Only modules with trainable parameters go through prepare (DDP refuses the others).
        trainable_names = [n for n, m in modules.items() if any(p.requires_grad for p in m.parameters())]
        prepared = accelerator.prepare(
            *[modules[n] for n in trainable_names], optimizer, dataloader, lr_scheduler
        )
        *prepared_modules, optimizer, dataloader, lr_scheduler = prepared
        for name, module in modules.items():
            if name not in trainable_names:
                module.to(accelerator.device)
        self._modules = OrderedDict(
            (n, prepared_modules[trainable_names.index(n)] if n in trainable_names else modules[n])
            for n in modules
        )
        self._names = {id(m): n for n, m in self._modules.items()}
        self._main_module = accelerator.unwrap_model(self._modules[task.main_module_name])
        self._main_param_names = [n for n, _ in self._main_module.named_parameters()]
        if args.use_ema:
            self.ema = EMAModel(
                self._main_module.parameters(),
                decay=args.ema_max_decay,
                min_decay=args.ema_min_decay,
                use_ema_warmup=args.ema_warmup,
                inv_gamma=args.ema_inv_gamma,
                power=args.ema_power,
            )
            self.ema.to(accelerator.device)
            self.ema_buffers = {name: b.detach().clone() for name, b in self._floating_buffers().items()}
        accelerator.register_save_state_pre_hook(self._save_hook)
        accelerator.register_load_state_pre_hook(self._load_hook)

        if accelerator.is_main_process and args.logger != "none":
            with self._recording():
                accelerator.init_trackers(self.project_name, config=_flat_config(self.config))

        resume_path = ckpt.resolve_resume_path(args.output_dir, args.resume_from_checkpoint)
        if args.resume_from_checkpoint and resume_path is None:
            logger.warning("No checkpoint in %s yet; starting a new run.", args.output_dir)
        if resume_path is not None:
            with open(resume_path / ckpt.STATE_FILE) as handle:
                saved = json.load(handle)
            if saved.get("num_processes", accelerator.num_processes) != accelerator.num_processes:
                logger.warning(
                    "Resuming a %s-process checkpoint with %s processes: data order will differ.",
                    saved.get("num_processes"),
                    accelerator.num_processes,
                )
            try:
                accelerator.load_state(str(resume_path))
            except (RuntimeError, KeyError, ValueError, OSError) as error:  # e.g. another model's weights
                raise ValueError(
                    f"Checkpoint {resume_path} does not fit this run ({' '.join(str(error).split())[:300]}); "
                    "resume with the flags it was saved with, or start over with --overwrite_output_dir."
                ) from error
            self.global_step = int(saved["global_step"])
        first_epoch = self.global_step // steps_per_epoch
        skip_batches = (self.global_step % steps_per_epoch) * args.gradient_accumulation_steps

        progress = tqdm(
            total=max_train_steps,
            initial=self.global_step,
            desc="Steps",
            disable=not accelerator.is_local_main_process,
        )
        ctx = StepContext(
            modules=self._modules,
            generator=self.generator,
            device=accelerator.device,
            global_step=self.global_step,
            accelerator=accelerator,
        )
        trainable = list(self._modules[n] for n in trainable_names)
        step_times: list[float] = []
        tick = time.perf_counter()
        for epoch in range(first_epoch, num_epochs):
            if self.global_step >= max_train_steps:
                break
            self.epoch = epoch
            for module in self._modules.values():
                module.train()
            sampler.set_epoch(epoch)
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(epoch)
            loader = dataloader
            if epoch == first_epoch and skip_batches:
                loader = accelerator.skip_first_batches(dataloader, skip_batches)
                if hasattr(loader, "set_epoch"):
                    loader.set_epoch(epoch)
            for batch in loader:
                ctx.global_step = self.global_step
                with accelerator.accumulate(*trainable):
                    with accelerator.autocast():
                        losses = task.compute_losses(batch, ctx)
                    total = combine_losses(losses.task, losses.distillation, args.distill_weight)
                    check_finite(total, {"task": losses.task, **losses.distillation}, self.global_step)
                    accelerator.backward(total)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        accelerator.clip_grad_norm_(params, args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.step(self._main_module.parameters())
                    self._ema_step_buffers()
                self.global_step += 1
                now = time.perf_counter()
                step_times.append(now - tick)
                tick = now
                logs = {
                    "loss": total.detach().item(),
                    "loss/task": losses.task.detach().item(),
                    "lr": lr_scheduler.get_last_lr()[0],
                }
                logs.update({f"loss/{k}": v.detach().item() for k, v in losses.distillation.items()})
                logs.update(losses.logs)
                if self.ema is not None:
                    logs["ema_decay"] = self.ema.cur_decay_value
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                accelerator.log(logs, step=self.global_step)
                self.last_logs = logs
                if args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0:
                    self.save_checkpoint()
                if (
                    args.validation_steps
                    and self.global_step % args.validation_steps == 0
                    and self.global_step < max_train_steps
                ):
                    self._evaluate(task)
                    tick = time.perf_counter()
                if self.global_step >= max_train_steps:
                    break
            if (
                args.validation_epochs
                and (epoch + 1) % args.validation_epochs == 0
                and self.global_step < max_train_steps
            ):
                self._evaluate(task)
                tick = time.perf_counter()
        progress.close()

        accelerator.wait_for_everyone()
        if getattr(task, "final_samples", True):  # --no_final_samples skips the end-of-training grid
            self._evaluate(task)
        if accelerator.is_main_process:
            with self.ema_weights(), self._recording():
                task.save_final(args.output_dir, self._eval_context())
            if args.push_to_hub:
                from ..hub import push_folder_to_hub

                try:
                    push_folder_to_hub(
                        args.output_dir,
                        self.hub_repo_id,
                        token=args.hub_token,
                        private=args.hub_private_repo,
                        commit_message=f"End of training (step {self.global_step})",
                        api=self.hub_api,
                    )
                except OSError as error:  # requests/huggingface_hub errors; the trained model is safe
                    raise OSError(
                        f"Training finished and the model is saved in {args.output_dir}, but --push_to_hub to "
                        f"{self.hub_repo_id} failed ({' '.join(str(error).split())}); upload it later with "
                        f"`huggingface-cli upload {self.hub_repo_id} {args.output_dir}`."
                    ) from error
        accelerator.wait_for_everyone()
        accelerator.end_training()
        # The first step includes warm-up work (allocations); report the median of the rest.
        timed = sorted(step_times[1:] or step_times)
        seconds_per_step = timed[len(timed) // 2] if timed else None
        return TrainResult(
            global_step=self.global_step,
            epochs=self.epoch + 1,
            seconds_per_step=seconds_per_step,
            output_dir=args.output_dir,
            metrics=dict(self.metrics),
            resumed_from=str(resume_path) if resume_path else None,
            last_logs=dict(self.last_logs),
        )
