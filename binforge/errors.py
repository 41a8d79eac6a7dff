"""The one error type the command line turns into a clear sentence and a non-zero exit."""

from __future__ import annotations

__all__ = ["BinforgeError"]


class BinforgeError(Exception):
    """A problem with the user's input or environment.

    The message is one sentence naming the problem and what to do about it.
    The CLI prints it as ``binforge: error: <message>`` and exits with status 2.
    """
