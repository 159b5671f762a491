"""Which errors the user can fix, and how they are reported: one line on stderr, exit status 2.

Shared by the `redistill` CLI and the example scripts so both answer bad input alike. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from safetensors import SafetensorError

# Bad flags and values (ValueError, which NonFiniteLossError is too), missing, unreadable or
# unwritable files and failed downloads/uploads (OSError), damaged weights (SafetensorError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, SafetensorError)
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def one_line(error: BaseException) -> str:
    """The error's message on one line (some libraries' messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def report(error: BaseException, prefix: str = "error") -> int:
    """Print ``prefix: message`` on stderr and return the exit status for bad input."""
    print(f"{prefix}: {one_line(error)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def report_keyboard_interrupt(prefix: str = "error") -> int:
    """Ctrl-C where no signal handler is installed (loading data, checking inputs, measuring): one line
    on stderr instead of a traceback from wherever the work was; returns `EXIT_INTERRUPTED`."""
    print(
        f"{prefix}: interrupted (Ctrl-C); run the same command again to redo it (a training run that saved "
        "checkpoints continues with --resume_from_checkpoint latest).",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED
