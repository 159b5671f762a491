"""Checkpoints of a `Trainer` run: accelerate save/load hooks, atomic save, resume, interrupted-run message.

`CheckpointHooks` is a mixin of `trainer.Trainer`; it uses the trainer's ``args``, ``accelerator``,
``global_step``, ``epoch``, ``ema``, ``_names``, ``_generator_state``, ``_signals`` and ``_stage``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

from safetensors.torch import load_file

from ..interrupts import Interrupted, at_phase
from . import checkpointing as ckpt
from . import run_checks

logger = logging.getLogger(__name__)


class CheckpointHooks:
    """Writes and reads ``checkpoint-<step>`` folders for the trainer (see the module docstring)."""

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
