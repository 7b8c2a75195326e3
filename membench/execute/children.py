"""What every process membench starts from a forkserver does first: a worker
(``membench.execute.worker``) or a rank of a cell on several devices
(``membench.multidevice.launch``). Neither imports the other through here, and this module imports
no torch."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait


def _watch_parent() -> None:
    """Exit this worker as soon as the sweep process is gone, even in the middle of a cell."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os._exit(3)

    threading.Thread(target=watch, name="membench-parent-watch", daemon=True).start()


def start_child(environ: dict[str, str]) -> None:
    """What a forkserver child does first (a worker, or a rank of a cell on several devices):
    leave Ctrl-C to the sweep (it reaches the whole process group; the sweep process decides
    what happens to cells), exit with its parent, and take its starter's environment: a
    forkserver child inherits the server's, not the sweep's current one, and the sweep's
    PYTHONPATH (plugins) must be importable here even when this process's starter had another
    (a Ray worker that runs cells for a sweep started elsewhere)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()
    os.environ.clear()
    os.environ.update(environ)
    for entry in reversed(environ.get("PYTHONPATH", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)
    import importlib

    from .. import archs, runners

    importlib.invalidate_caches()
    runners.refresh_registry()
    archs.refresh_registry()  # the membench.archs entry points and probes, read afresh too


@contextmanager
def without_main_module() -> Iterator[None]:
    """Hide ``__main__`` while a worker starts, so the worker does not re-import it.

    multiprocessing re-runs the parent's main script in every child; the worker needs nothing
    from it, and re-running it costs time and breaks scripts without an ``if __name__`` guard.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def exit_text(process) -> str:
    """How a process ended, for a row: 'exit code 7', 'killed by signal SIGKILL'."""
    code = process.exitcode
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
