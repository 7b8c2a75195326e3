"""Running a user's code (a model factory, its module's import) with a bound on its time.

A probe of an arch (``membench.archs.probe``) builds the user's model before any cell runs;
the user's code may never return (a loop, a lock, a prompt for input) or end the program
(``sys.exit``, ``os._exit`` aside). ``call_bounded`` runs it in a daemon thread and waits at
most ``probe_timeout_s()`` for it: a hang becomes a one-line ArchError naming the code and the
limit, ``sys.exit(N)`` one naming the exit code, so a sweep refuses the arch instead of hanging
or exiting silently. A thread (not a process) keeps the probe's cost and what it can see (the
user's ``sys.path``, modules imported so far) as they were; a thread that never returns is
left behind, asleep or spinning, until the program exits, which the CLI does at once on the
error. Ctrl-C still reaches the main thread while it waits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from .specs import ArchError

# Building the largest timm models on the meta device allocates and initialises each weight
# once before moving it there: about a minute on a loaded 2-core CPU, so the default leaves
# room for that. MEMBENCH_PROBE_TIMEOUT_S changes it.
PROBE_TIMEOUT_S = 300.0
TIMEOUT_ENV = "MEMBENCH_PROBE_TIMEOUT_S"

T = TypeVar("T")


def probe_timeout_s() -> float:
    """The bound on one probe of user code: $MEMBENCH_PROBE_TIMEOUT_S, else PROBE_TIMEOUT_S."""
    value = os.environ.get(TIMEOUT_ENV)
    try:
        return float(value) if value else PROBE_TIMEOUT_S
    except ValueError:
        raise ArchError(f"${TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None


def call_bounded(call: Callable[[], T], what: str, timeout_s: float | None = None) -> T:
    """``call()``'s result, run in a daemon thread for at most ``timeout_s`` (default
    ``probe_timeout_s()``); its exception as raised, except that ``sys.exit`` and a call that
    does not return in time are ArchErrors naming ``what``."""
    limit = probe_timeout_s() if timeout_s is None else timeout_s
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - carried to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=run, name="membench-probe", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise ArchError(
            f"{what} did not return within {limit:g} s (the bound on probing user code; "
            f"${TIMEOUT_ENV} changes it)"
        )
    error = outcome.get("error")
    if isinstance(error, SystemExit):
        raise ArchError(f"{what} called sys.exit({error.code!r})") from None
    if error is not None:
        raise error
    return outcome["value"]  # type: ignore[return-value]


__all__ = ["PROBE_TIMEOUT_S", "TIMEOUT_ENV", "call_bounded", "probe_timeout_s"]
