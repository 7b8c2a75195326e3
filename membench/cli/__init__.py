"""The ``membench`` command: thin typer wrappers over the library (one module per command group).

``main`` imports the application itself: importing it (pandas, scipy, matplotlib) takes seconds
on a loaded machine, and Ctrl-C in those seconds must be one line too, not a traceback.
"""

from __future__ import annotations

import signal
import sys


def _terminate(signum, frame) -> None:
    from ..errors import Terminated

    raise Terminated()


def main() -> None:
    """The ``membench`` program: Ctrl-C at any moment exits 130 with one line, SIGTERM 143,
    even when the signal lands in a finalizer, and without the interpreter's slow teardown
    (``membench.interrupts``)."""
    from .. import interrupts
    from ..errors import INTERRUPTED, Terminated

    signal.signal(signal.SIGTERM, _terminate)
    interrupts.install()
    try:
        _application()()
    except KeyboardInterrupt as err:  # before any command runs (the imports above)
        print("membench: interrupted", file=sys.stderr)
        code = Terminated.EXIT if isinstance(err, Terminated) else INTERRUPTED
    except SystemExit as exit:
        code = exit.code
    else:
        code = 0
    if code in (INTERRUPTED, Terminated.EXIT):
        interrupts.exit_now(code)
    sys.exit(code)


def _application():
    """The typer application, imported on first use. Importing the ``app`` submodule binds
    ``membench.cli.app`` to the module; the package's ``app`` is the application, as it was
    when this package imported it eagerly, so it is bound again here."""
    import importlib

    module = importlib.import_module(f"{__name__}.app")
    globals()["app"] = module.app
    return module.app


def __getattr__(name: str):
    if name == "app":  # `from membench.cli import app`: the typer application
        return _application()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
