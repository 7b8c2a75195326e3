"""The errors membench shows a user, and how an exception becomes one line of a results row.

Every error that means "the input is wrong" (an unknown method, a bad profile, a file that is not
membench's, a device that does not exist) derives from ``InputError`` and carries a one-line
message; the CLI turns it into ``membench: error: ...`` and exit code 2, before any cell runs.
"""

from __future__ import annotations

import traceback


class InputError(ValueError):
    """Bad input, found before anything ran; the message is one line naming what is wrong."""


def one_line(err: BaseException, limit: int = 800) -> str:
    """The error on one line; a long one keeps its head and its tail, where CUDA's OOM message
    says how much was allowed and allocated."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}"
    return text if len(text) <= limit else f"{text[: limit // 2]} ... {text[-(limit // 2 - 5) :]}"


def where(err: BaseException) -> str:
    """'at FILE:LINE' of the frame that raised ``err`` ('' without a traceback)."""
    frames = traceback.extract_tb(err.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def error_text(err: BaseException) -> str:
    """What a results row's ``error`` column says about an exception: the message and where."""
    location = where(err)
    return f"{one_line(err)} | {location}" if location else one_line(err)


INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be (``membench.cli.main`` installs the handler), so
    the same code stops a sweep cleanly; the command exits with ``EXIT`` (128 + SIGTERM)."""

    EXIT = 143
