"""The sweep engine: run a grid's cells isolated, append each result as it finishes, resume.

Executors. Where cells run is an executor's business (``membench.execute.local``): the local one
runs them one at a time on this machine, the Ray one (``executor="ray"``,
``membench.execute.ray_cluster``)
as Ray tasks on a cluster, several at once. Whatever the executor, this module is the only writer
of the results folder: it appends each result as the executor yields it.

Isolation. With ``isolation="process"`` (the default) every cell runs in a worker process
(``membench.execute.worker``), so a CUDA OOM, a segfault, ``os._exit`` or a hang in one cell
becomes a row
(``oom``, ``error``, ``timeout``) and the sweep goes on. One worker is reused across cells until a
cell ends in anything but ``ok`` (or the device budget changes); then it is discarded and the next
cell gets a fresh one, so a poisoned CUDA context or a fragmented allocator never leaks into the
next measurement. Estimates run the same way, so ``timeout_s`` bounds them too. (On Ray every cell
gets a fresh worker process.)

Only the sweep process writes results (``membench.results``), under an exclusive lock on the
folder; a folder holding another program's CSV is refused before anything runs.

Estimates of independent cells run several at once (``jobs``, by default one per core), each
in its own worker process (``local.ParallelExecutor``); their rows are the ones a single worker
gives, appended as each cell finishes.

Resume. A cell counts as finished when ``cells.csv`` has a row with the same settings (every field
of its ``Cell``), device and device name (the GPU or CPU model), whatever its status (estimates
count only for estimates). The device name comes from the first worker's hello, sent before any
cell, so
the sweep process never opens a CUDA context; rows measured on another machine stay in the file
and do not count as finished here. On a Ray cluster every node says hello, and a row measured on
any device model the cluster holds counts. Rerunning the same sweep skips finished cells;
``redo=True`` runs them again and replaces their rows (this machine's, or this cluster's, only),
each at the moment its new row exists and in one transaction with its steps, so an interrupted
redo keeps every row it has not replaced yet (``membench.resume.replace_result``).
Before running, ``steps.csv`` rows that belong to no row of ``cells.csv`` (a sweep killed between
the two appends) are removed, so a rerun cell never has its steps twice. Estimates resume the
same way (an estimate row counts as finished for estimates of the same device kind, never for a
measurement): a grid of hundreds of estimates interrupted half-way goes on where it stopped, and
``redo=True`` recomputes them (after an upgrade of membench or torch).
"""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, SweepConfig, SweepOptions
from ..multidevice.rows import append_ranks
from ..results import append_result, read_rows, write_env
from ..resume import (
    cell_key,
    latest_rows,
    prepare_results_folder,
    prune_results,
    replace_result,
    results_lock,
    row_key,
)
from ..schema import CELLS_FILE, ENV_FILE, Cell, CellResult, is_estimate_row
from ..timeline.files import write_timeline
from .local import Executor, LocalExecutor, ParallelExecutor, Placement, SweepError, default_jobs
from .worker import Target


class SweepProgress:
    """Hooks a sweep calls as it goes; subclass and override what you need (all no-ops here)."""

    def device_ready(self, device: str, device_name: str) -> None:
        """The cells run on ``device`` (e.g. ``cuda:0``), a ``device_name`` (the GPU or CPU model,
        as the worker names it); called before ``sweep_started``, once per device model the
        cells may run on (once, unless a Ray cluster holds several models)."""

    def note(self, text: str) -> None:
        """Something the user should read once (e.g. no peak is known for this GPU)."""

    def sweep_started(self, total: int, to_run: int, out_dir: Path) -> None:
        """``total`` cells in the grid, ``to_run`` of them not finished yet."""

    def cell_started(self, index: int, cell: Cell) -> None:
        """Cell number ``index`` (0-based among the cells to run) is starting; on a Ray cluster
        several cells run at once."""

    def cell_finished(self, index: int, result: CellResult, wall_s: float) -> None:
        """Cell number ``index`` is done and its row is on disk (cells may finish in any order
        on a Ray cluster)."""

    def sweep_finished(self, results: list[CellResult]) -> None:
        """Every cell to run has a row."""


def sweep(
    config: SweepConfig, out_dir: Path, *, redo: bool = False, progress: SweepProgress | None = None
) -> list[CellResult]:
    """Run (or, with ``--estimate``, predict) every cell of a configuration into ``out_dir``,
    with its options' executor. Returns the results of the cells run by this call."""
    return run_cells(list(config.cells), config.options, out_dir, redo=redo, progress=progress)


def run_sweep(
    cells: list[Cell],
    device: object,
    out_dir: Path,
    *,
    redo: bool = False,
    progress: SweepProgress | None = None,
    **options,
) -> list[CellResult]:
    """Measure every unfinished cell on ``device`` (``cpu``, ``cuda:0``, ``auto``, or a
    ``Device``), appending each row to ``out_dir`` as it completes. ``options`` are the other
    ``SweepOptions`` (``isolation``, ``timeout_s``, ``executor``, ``peak_tflops``, ...); ConfigError
    for a bad one. See ``run_cells``."""
    return run_cells(
        cells, SweepOptions(device=str(device), **options), out_dir, redo=redo, progress=progress
    )


def estimate_sweep(
    cells: list[Cell],
    device_kind: str,
    out_dir: Path,
    *,
    progress: SweepProgress | None = None,
    **options,
) -> list[CellResult]:
    """Predict every cell with ``membench.planning.estimate`` for a kind of device (``cuda`` or
    ``cpu``); ``options`` as ``run_sweep``'s. See ``run_cells``."""
    return run_cells(
        cells,
        SweepOptions(device=device_kind, estimate=True, **options),
        out_dir,
        progress=progress,
    )


def run_cells(
    cells: list[Cell],
    options: SweepOptions,
    out_dir: Path,
    *,
    redo: bool = False,
    progress: SweepProgress | None = None,
) -> list[CellResult]:
    """Run (or predict) ``cells`` into ``out_dir`` under ``options``, appending each row as it
    completes; returns the results of the cells run by this call, in grid order.

    ``isolation="process"`` runs cells in worker processes (see the module docstring);
    ``"none"`` runs them here, for debugging, and cannot enforce a timeout. Cells already in
    ``cells.csv`` for this device and device model are skipped unless ``redo``; so are
    estimates of the same kind (a ``cuda (estimate)`` row is no ``cpu`` estimate), and
    ``env.json`` is written for them only where the folder has none, so an estimate never
    replaces a measured run's provenance.
    ``executor="ray"`` runs the cells as Ray tasks, several at once. Raises ResultsError (or
    SweepLockedError) for a folder it cannot use, SweepError when no worker can start.
    """
    methods = sorted({c.method for c in cells})
    timeline = dict(timeline=options.timeline, timeline_snapshot=options.timeline_snapshot)
    precisions = tuple(sorted({c.precision for c in cells}))  # each one's peak, once per sweep
    runner: Executor
    if options.estimate:
        target = Target(
            options.estimate_kind,
            estimate_kind=options.estimate_kind,
            device_profile=options.device_profile,
            fit_by=options.fit_by,
            **timeline,
        )
        jobs = min(options.jobs or default_jobs(), len(cells))
        if options.isolation == "process" and jobs > 1:  # independent cells: several at once
            runner = ParallelExecutor(target, options.timeout_s, methods, jobs)
        else:
            runner = LocalExecutor(target, options.isolation, options.timeout_s, methods)
    elif options.executor == "ray":
        from .ray_cluster import RayExecutor  # only here: a local sweep never imports Ray

        runner = RayExecutor(
            options.device,
            methods,
            address=options.ray_address,
            cpus_per_cell=options.cpus_per_cell,
            timeout_s=options.timeout_s,
            peak_tflops=options.peak_tflops,
            precisions=precisions,
            timeline=timeline,
        )
    else:
        runner = LocalExecutor(
            Target(
                options.device,
                peak_tflops=options.peak_tflops,
                precisions=precisions,
                # the first worker starts with the first cell's allocator configuration
                alloc_conf=cells[0].alloc_conf if cells else "",
                **timeline,
            ),
            options.isolation,
            options.timeout_s,
            methods,
        )
    return _sweep(cells, runner, out_dir, progress, redo=redo, estimates=options.estimate)


def _sweep(
    cells: list[Cell],
    executor: Executor,
    out_dir: Path,
    progress: SweepProgress | None,
    redo: bool,
    estimates: bool,
) -> list[CellResult]:
    """The one sweep loop: lock, name the device, prune, skip what is done, run the rest and
    append each row as it comes. ``redo`` replaces the grid's earlier rows of the same kind
    (measured or estimated)."""
    progress = progress or SweepProgress()
    out_dir = Path(out_dir)
    results: dict[int, CellResult] = {}
    with results_lock(out_dir):
        prepare_results_folder(out_dir)
        try:
            placement = executor.start()
            _check_precisions(cells, placement)
            for name in placement.device_names:
                progress.device_ready(placement.device, name)
            for note in (*placement.notes, *_mixing_notes(out_dir, placement, estimates)):
                progress.note(note)
            todo = _unfinished(cells, placement, out_dir, redo, estimates)
            progress.sweep_started(len(cells), len(todo), out_dir)
            if todo and (not estimates or not (out_dir / ENV_FILE).exists()):
                write_env(out_dir, executor.provenance())
            for index, result, wall_s in executor.run(todo, progress.cell_started):
                if result.wall_s is None:  # a cell whose process died: how long it had
                    result.wall_s = wall_s
                write_timeline(out_dir, result)  # before the row, which marks the cell done
                append_ranks(out_dir, result)  # a cell on several devices: each rank's row
                if redo:  # its earlier rows go only now, with its new row in their place
                    replace_result(
                        out_dir, result, _earlier_rows(result.cell, placement, estimates)
                    )
                else:
                    append_result(out_dir, result)
                results[index] = result
                progress.cell_finished(index, result, wall_s)
        finally:
            executor.close()
    ordered = [results[index] for index in sorted(results)]
    progress.sweep_finished(ordered)
    return ordered


def _mixing_notes(out_dir: Path, placement: Placement, estimates: bool) -> list[str]:
    """A note when measured rows go into a folder of estimates (or the other way round): both
    kinds stay apart in every reader, but the user should know the folder now holds both."""
    other = [row for row in read_rows(out_dir / CELLS_FILE)[1] if is_estimate_row(row) != estimates]
    if not other:
        return []
    devices = ", ".join(sorted({str(row.get("device")) for row in other}))
    these = "estimates" if estimates else f"measurements on {placement.device}"
    return [
        f"{out_dir} holds {len(other)} {'measured' if estimates else 'estimated'} row(s) "
        f"({devices}); these {these} go beside them (readers keep the two apart)"
    ]


def _check_precisions(cells: list[Cell], placement: Placement) -> None:
    """ConfigError, before any cell runs, for a precision torch cannot autocast to here."""
    if not placement.precisions:
        return
    for cell in cells:
        if cell.precision not in placement.precisions:
            raise ConfigError(
                f"--precision {cell.precision}: torch cannot autocast to it on "
                f"{placement.device} ({', '.join(placement.device_names)}); valid "
                f"here: {', '.join(placement.precisions)}"
            )


def _keys(cell: Cell, placement: Placement) -> set[tuple]:
    return {cell_key(cell, placement.device, name) for name in placement.device_names}


def _earlier_rows(cell: Cell, placement: Placement, estimates: bool):
    """Selects the rows a redone ``cell`` replaces: its rows of the same kind (measured or
    estimated) on one of the placement's device models."""
    keys = _keys(cell, placement)
    return lambda row: row_key(row) in keys and is_estimate_row(row) == estimates


def _unfinished(
    cells: list[Cell], placement: Placement, out_dir: Path, redo: bool, estimates: bool
) -> list[Cell]:
    """The cells to run: prune orphan steps, then, unless ``redo``, drop every cell with a row
    on one of the placement's device models (with ``redo`` every row stays until its cell's
    new row replaces it)."""
    prune_results(out_dir)  # orphan steps only
    if redo:
        return list(cells)
    done = set(latest_rows(out_dir, estimates=estimates))
    return [cell for cell in cells if not _keys(cell, placement) & done]


__all__ = ["SweepError", "SweepProgress", "estimate_sweep", "run_cells", "run_sweep", "sweep"]
