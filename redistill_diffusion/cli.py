"""`redistill` console entry point. Each subcommand lives in `redistill_diffusion.commands.<name>`
and exposes ``register(subparsers)``, which adds its parser and sets ``func`` to run it."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import USER_ERRORS, report, report_interrupt, report_keyboard_interrupt
from .interrupts import Interrupted

SUBCOMMANDS = ("memory", "train", "quickstart", "eval", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redistill",
        description="ReDistill: peak-memory-lean students for diffusers UNets and timm CNNs.",
        allow_abbrev=False,  # no prefix matching anywhere (issue 24): a misspelt flag is refused
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"redistill_diffusion.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"redistill_diffusion.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as error:
        return report(error, prefix=f"redistill {args.command}: error")
    except Interrupted as stop:
        return report_interrupt(stop, prefix=f"redistill {args.command}")
    except KeyboardInterrupt:
        return report_keyboard_interrupt(prefix=f"redistill {args.command}")


if __name__ == "__main__":
    sys.exit(main())
