"""SIGTERM (a scheduler's pre-emption) and SIGINT (Ctrl-C): stop cleanly, say how to resume, exit 143 / 130.

While `SignalGuard` is installed (the training loop, `redistill eval`), the first SIGTERM or SIGINT
either waits for the work that must not be cut (an optimizer step, a checkpoint being written:
inside `SignalGuard.deferring`) or, anywhere else (evaluation, the final save), stops it at once by
raising `Interrupted`. Staged outputs are then dropped (`training.outputs.staged`), the run lock is
removed, and the entry point prints one line and exits with 128 + the signal number. A second signal
stops whatever is running, deferred or not.

Test hook (inert unless set): ``REDISTILL_TEST_SIGNAL_AT=<phase>[:<SIGNAME>]`` makes the process send
itself the signal (default SIGTERM) the first time it reaches ``<phase>`` (`at_phase`); the fault
tests use it to interrupt at exact moments (``after_setup``, ``mid_step``, ``checkpoint_save``,
``final_save``, ``eval_report``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

TEST_HOOK_ENV = "REDISTILL_TEST_SIGNAL_AT"
HANDLED = (signal.SIGTERM, signal.SIGINT)
_fired: set[str] = set()


class Interrupted(BaseException):
    """A SIGTERM / SIGINT stopped the work (a BaseException, like KeyboardInterrupt: ``except
    Exception`` in task code must not swallow it). ``message`` says what was kept and how to go on."""

    def __init__(self, signum: int, message: str = ""):
        self.signum = signum
        self.message = message
        super().__init__(message or signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 143 for SIGTERM, 130 for SIGINT, as a shell reports them

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class SignalGuard:
    """Installs handlers for SIGTERM and SIGINT for the length of a ``with`` block (main thread only;
    elsewhere it does nothing and the process keeps Python's defaults)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._defer = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signum
        if first and self._defer:
            return  # the step or checkpoint in progress finishes; the loop stops after it
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """A first signal inside the block waits for its end (`pending` then says so)."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1

    @property
    def pending(self) -> bool:
        return self.received is not None


def at_phase(phase: str) -> None:
    """The fault tests' hook: send this process the signal named by ``REDISTILL_TEST_SIGNAL_AT`` the first
    time ``phase`` is reached. Does nothing unless that variable names this phase."""
    wanted = os.environ.get(TEST_HOOK_ENV)
    if not wanted:
        return
    name, _, signame = wanted.partition(":")
    if name != phase or phase in _fired:
        return
    _fired.add(phase)
    os.kill(os.getpid(), getattr(signal, signame or "SIGTERM"))


def reset_test_hook() -> None:
    """Let `at_phase` fire again (in-process tests run several interrupted runs in one process)."""
    _fired.clear()


__all__ = ["HANDLED", "Interrupted", "SignalGuard", "TEST_HOOK_ENV", "at_phase", "reset_test_hook"]
