"""The ``membench`` command: thin typer wrappers over the library (one module per command group)."""

from .app import app, main

__all__ = ["app", "main"]
