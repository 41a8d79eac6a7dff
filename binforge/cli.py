"""The ``binforge`` command line: one subcommand per stage of the flow.

Each stage's command lives in its own module under ``binforge/commands/`` with
two functions, ``add_parser(subparsers)`` and ``run(args) -> int``. A command
is listed in ``COMMANDS`` only once it works.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from binforge import __version__
from binforge.errors import BinforgeError

__all__ = ["main", "COMMANDS"]

# Order is the order of the flow; each name is a module in binforge.commands.
COMMANDS: list[str] = ["data", "train", "compile", "golden", "hw", "sim", "build", "run", "explore"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binforge",
        description="Train and prune binary networks, compile them to exact integer IR, "
        "generate and verify XNOR-popcount accelerators, build them for FPGAs.",
    )
    parser.add_argument("--version", action="version", version=f"binforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"binforge.commands.{name}")
        module.add_parser(sub)
    return parser


class Terminated(BaseException):
    """SIGTERM, raised where the command is, so that it unwinds like an interrupt: output
    folders under construction are removed and the tools it started are stopped."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        return int(args.run(args) or 0)
    except BinforgeError as exc:
        print(f"binforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("binforge: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("binforge: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
