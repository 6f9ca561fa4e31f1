"""The project's user-error type and the way every command reports one.

A `UserError` is a mistake in what the user handed in (a flag, a file, a dataset); its message
names the flag or file and the fix. Commands print it as one `error: ...` line and exit with
status 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input; the message names it and the fix. A ValueError, so older `except ValueError` still holds."""


# what a command reports as a user's mistake: ours, and the OS's answers about the user's paths
REPORTED = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError,
            RuntimeError, OSError)


def command_status(main: Callable[..., object], *args) -> int:
    """Call an entry point's main(*args) and return its exit status: a user error is one `error: ...` line
    and status 2, Ctrl-C a short message and status 130, never a traceback."""
    try:
        status = main(*args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except REPORTED as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


def run_command(main: Callable[[], object]) -> None:
    """`python entry.py`: exit with command_status(main)."""
    sys.exit(command_status(main))


def subcommand(argv: list[str], commands, usage: str) -> str | None:
    """The command named by argv[0] (one of `commands`); None after printing `usage` for -h/--help;
    a missing or unknown command is a UserError naming the valid ones."""
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return None
    if not argv or argv[0] not in commands:
        raise UserError(f"give a command: {' or '.join(commands)} (see --help)")
    return argv[0]


def number_in(kind: type, low, high, why: str = ""):
    """An argparse `type=` for a tool's own numeric flag: `kind` (int or float) with low <= value <= high, so
    every flag has a range that keeps memory and arithmetic finite (argparse reports it: status 2)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            wanted = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not (low <= value <= high):  # NaN fails this too
            raise argparse.ArgumentTypeError(f"{text} is outside [{low}, {high}]{why}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
