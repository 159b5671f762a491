"""Which errors the user can fix, and how they are reported: one line on stderr, exit status 2.

Shared by the `redistill` CLI and the example scripts so both answer bad input alike. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from safetensors import SafetensorError

# Bad flags and values (ValueError, which NonFiniteLossError is too), missing, unreadable or
# unwritable files and failed downloads/uploads (OSError), damaged weights (SafetensorError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, SafetensorError)
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def one_line(error: BaseException) -> str:
    """The error's message on one line (some libraries' messages span several)."""
    from .redaction import redact_text

    return redact_text(" ".join(str(error).split()) or type(error).__name__)


def report(error: BaseException, prefix: str = "error") -> int:
    """Print ``prefix: message`` on stderr and return the exit status for bad input."""
    print(f"{prefix}: {one_line(error)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def report_interrupt(stop, prefix: str = "") -> int:
    """Print an `interrupts.Interrupted`'s one line (what was kept, how to resume) on stderr and return
    128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a shell would."""
    message = one_line(stop) if stop.message else f"interrupted by {stop.signal_name}"
    print(f"{prefix}: {message}" if prefix else message, file=sys.stderr)
    return stop.exit_code


def report_keyboard_interrupt(prefix: str = "") -> int:
    """Ctrl-C where no `interrupts.SignalGuard` is installed (parsing flags, reading a recipe, ``redistill
    memory``): one line on stderr instead of a traceback from wherever the work was; returns
    `EXIT_INTERRUPTED`, as `report_interrupt` does for SIGINT."""
    message = (
        "interrupted by SIGINT (Ctrl-C) before any training step; run the same command again to redo it "
        "(a training run that saved checkpoints continues with --resume_from_checkpoint latest)."
    )
    print(f"{prefix}: {message}" if prefix else message, file=sys.stderr)
    return EXIT_INTERRUPTED


def script_main(run, argv: Sequence[str] | None = None) -> int:
    """Entry point of the example scripts (``run(argv)`` of either task): bad input -> one line on stderr and exit status 2, as `redistill`."""
    from .interrupts import Interrupted

    try:
        result = run(argv)
    except USER_ERRORS as error:
        return report(error)
    except Interrupted as stop:  # SIGTERM / SIGINT: one line, no traceback, 143 / 130
        return report_interrupt(stop)
    except KeyboardInterrupt:
        return report_keyboard_interrupt()
    print(f"Finished at step {result.global_step}; outputs in {result.output_dir}")
    return 0
