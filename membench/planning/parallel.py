"""Estimates of independent cells, several at once: one worker process per core.

An estimate runs Python on fake tensors, one op after another, on one core; the cells of a
``plan`` or of several ``fit`` searches do not depend on each other, so they run side by side,
each in a worker process of the sweep's own (``membench.execute``: a forkserver with torch
imported once, a worker replaced after a cell that failed). A worker gives the row an estimate
in this process gives (``open_target``'s, the sweep's: tests/planning/test_parallel.py holds
them equal). ``jobs=1`` estimates here, one cell after another, with no worker at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from ..execute.local import LocalExecutor, ParallelExecutor, default_jobs
from ..execute.worker import Target, open_target
from ..schema import Cell, CellResult

# (cells finished, cells in all, the result that just finished)
Progress = Callable[[int, int, CellResult], None]
Estimator = Callable[[Cell], CellResult]


def estimate_cells(
    cells: list[Cell],
    kind: str = "cuda",
    *,
    jobs: int | None = None,
    progress: Progress | None = None,
    device_profile: str | None = None,
    fit_by: str = "total",
) -> list[CellResult]:
    """Estimate every cell for ``kind`` devices, ``jobs`` at once (default: one per core); the
    results in the order of ``cells``, ``progress`` told as each one finishes. A CUDA estimate's
    device total is for ``device_profile``'s card (a name or a path), its budget judged by
    ``fit_by`` (docs/device-total.md)."""
    target = _target(kind, device_profile, fit_by)
    jobs = min(jobs or default_jobs(), len(cells))
    results: list[CellResult | None] = [None] * len(cells)
    if jobs <= 1:
        estimate = open_target(target).run
        for index, cell in enumerate(cells):
            results[index] = estimate(cell)
            if progress is not None:
                progress(index + 1, len(cells), results[index])
        return results
    executor = ParallelExecutor(target, None, _methods(cells), jobs)
    try:
        executor.start()
        finished = executor.run(cells, lambda index, cell: None)
        for done, (index, result, _) in enumerate(finished, start=1):
            results[index] = result
            if progress is not None:
                progress(done, len(cells), result)
    finally:
        executor.close()
    return results


@contextlib.contextmanager
def estimators(
    kind: str,
    methods: list[str],
    jobs: int,
    device_profile: str | None = None,
    fit_by: str = "total",
) -> Iterator[list[Estimator]]:
    """``jobs`` functions that each estimate one cell at a time in a worker process of their
    own (one function per thread that calls it: a search that picks its next cell from the
    last estimate); ``jobs=1``: one that estimates in this process. ``device_profile`` and
    ``fit_by`` as ``estimate_cells``'."""
    target = _target(kind, device_profile, fit_by)
    if jobs <= 1:
        yield [open_target(target).run]
        return
    executors = [LocalExecutor(target, "process", None, methods) for _ in range(jobs)]
    try:
        yield [executor.run_one for executor in executors]
    finally:
        for executor in executors:
            executor.close()


def _target(kind: str, device_profile: str | None, fit_by: str) -> Target:
    return Target(kind, estimate_kind=kind, device_profile=device_profile, fit_by=fit_by)


def _methods(cells: list[Cell]) -> list[str]:
    return sorted({cell.method for cell in cells})


__all__ = ["Estimator", "Progress", "estimate_cells", "estimators"]
