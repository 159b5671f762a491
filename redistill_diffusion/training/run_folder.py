"""The output folder of a `Trainer` run: claimed under a lock before any work, released at the end.

`OutputDirClaim` is a mixin of `trainer.Trainer`: the lock, the --overwrite_output_dir clean-up, the
early --push_to_hub repo creation, and the recorded / staged writes into output_dir (`outputs`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..files import ensure_output_dir
from ..interrupts import at_phase
from . import outputs
from .task import HubPublishingTask


class OutputDirClaim:
    """One run per output folder, and every process agreeing on a user error (see the module docstring)."""

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
                outputs.check_output_dir(
                    args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir
                )
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
