"""Nothing a user had is lost to a fault: a redo killed (SIGKILL, SIGINT, SIGTERM) at every stage
keeps every row, a full disk is one line with every written row readable and a rerun resumes,
and resume is keyed on the cell, never duplicating a row."""

from __future__ import annotations

import csv
import errno
import multiprocessing
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import TINY_ARCH, TINY_RES
from helpers import usage_error
from typer.testing import CliRunner

from membench import durable
from membench.cli import app
from membench.execute.local import Executor, Placement
from membench.execute.sweep import _sweep
from membench.results import append_result
from membench.resume import LOCK_FILE, recover
from membench.schema import Cell, CellResult

CELLS = [Cell("bp", TINY_ARCH, TINY_RES, batch, warmup=1, steps=2) for batch in (2, 4, 6)]
OLD, NEW = 1.0, 2.0  # the step times of the first run's rows and of the redo's


class Canned(Executor):
    """Results without computing: each cell's row says which run it is by its step times;
    ``tick`` is called while each cell "runs"."""

    def __init__(self, step_ms: float, tick=lambda: None):
        self.step_ms, self.tick = step_ms, tick

    def start(self):
        return Placement("cpu", ("Test CPU",))

    def provenance(self):
        return {}

    def run(self, cells, started):
        for index, cell in enumerate(cells):
            started(index, cell)
            self.tick()
            yield index, CellResult(cell, "cpu", "Test CPU", step_ms=[self.step_ms] * 2), 0.0

    def close(self):
        pass


def read(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.exists() else []


def state(out: Path) -> dict[str, tuple[float, list[float]]]:
    """cell id -> (its row's median step time, its steps' times); asserts one row per cell."""
    rows = read(out / "cells.csv")
    ids = [row["cell_id"] for row in rows]
    assert sorted(ids) == sorted(cell.cell_id for cell in CELLS), ids  # none lost, none twice
    steps = read(out / "steps.csv")
    return {
        row["cell_id"]: (
            float(row["step_ms_median"]),
            [float(s["step_ms"]) for s in steps if s["cell_id"] == row["cell_id"]],
        )
        for row in rows
    }


def _hook_operations(on_operation) -> Canned:
    """Call ``on_operation(name, path)`` before every durable operation (a synced write, a
    rename, a directory sync) and every cell of a redo; the redo's executor."""

    def hooked(name, function):
        def call(*args, **kwargs):
            on_operation(name, Path(args[0]).name)
            return function(*args, **kwargs)

        return call

    durable._write_synced = hooked("write", durable._write_synced)
    durable._fsync_dir = hooked("sync", durable._fsync_dir)
    durable.os.replace = hooked("rename", os.replace)
    return Canned(NEW, tick=lambda: on_operation("cell", ""))


def operations(tmp_path: Path, monkeypatch) -> list[tuple[str, str]]:
    """Every operation of a redo of a finished folder, in order."""
    done, folder = [], finished_folder(tmp_path / "dry")
    for name in ("_write_synced", "_fsync_dir"):
        monkeypatch.setattr(durable, name, getattr(durable, name))
    monkeypatch.setattr(durable.os, "replace", os.replace)
    executor = _hook_operations(lambda name, path: done.append((name, path)))
    _sweep(CELLS, executor, folder, None, redo=True, estimates=False)
    monkeypatch.undo()
    return done


def _redo_child(out: Path, stage: int, signum: int) -> None:
    """A redo of a finished folder that signals itself just before its ``stage``-th
    operation (1-based, as ``operations`` lists them)."""
    from membench.cli import _terminate

    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the interrupted child's traceback
    signal.signal(signal.SIGTERM, _terminate)
    count = [0]

    def on_operation(name, path):
        count[0] += 1
        if count[0] == stage:
            os.kill(os.getpid(), signum)

    _sweep(CELLS, _hook_operations(on_operation), out, None, redo=True, estimates=False)
    os._exit(0 if count[0] < stage else 5)  # 5: the signal was handled, the sweep went on


def run_child(out: Path, stage: int, signum: int) -> int:
    child = multiprocessing.get_context("fork").Process(
        target=_redo_child, args=(out, stage, signum)
    )
    child.start()
    child.join()
    return child.exitcode


def finished_folder(tmp_path: Path) -> Path:
    out = tmp_path / "finished"
    _sweep(CELLS, Canned(OLD), out, None, redo=False, estimates=False)
    return out


@pytest.mark.slow
def test_a_redo_killed_at_any_stage_loses_no_row(tmp_path, monkeypatch):
    """SIGKILL before each operation of a redo (each cell, every synced write, rename and
    directory sync): every cell keeps its old row or has its new one with its own steps, and a
    rerun finishes the redo."""
    stages = operations(tmp_path, monkeypatch)
    assert stages.count(("rename", "cells.csv.tmp")) == len(CELLS)
    pristine = finished_folder(tmp_path)
    outcomes = []
    for stage in range(1, len(stages) + 2):
        out = tmp_path / f"stage{stage}"
        shutil.copytree(pristine, out)
        code = run_child(out, stage, signal.SIGKILL)
        if stage > len(stages):
            assert code == 0  # past the last operation: the redo ran to its end
            break
        assert code == -signal.SIGKILL
        recover(out)  # what the next sweep does first
        cells = state(out)
        assert all(steps == [median] * 2 for median, steps in cells.values()), (
            stages[stage - 1],
            cells,
        )
        outcomes.append(sorted(median for median, _ in cells.values()))
        _sweep(CELLS, Canned(NEW), out, None, redo=True, estimates=False)
        assert all(steps == [NEW] * 2 for _, steps in state(out).values())
    assert outcomes[0] == [OLD] * 3 and [OLD, NEW, NEW] in outcomes  # killed before and between


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_during_a_rewrite_waits_for_it(tmp_path, monkeypatch, signum):
    stages = operations(tmp_path, monkeypatch)
    # between the first redone cell's two renames, and right at its commit
    first = stages.index(("rename", "cells.csv.tmp")) + 1
    pristine = finished_folder(tmp_path)
    for stage in (first + 1, first - 1):
        out = tmp_path / f"{signum}-{stage}"
        shutil.copytree(pristine, out)
        assert run_child(out, stage, signum) not in (0, 5)  # it stopped, once the commit was done
        assert not (out / durable.JOURNAL).exists()  # nothing left half done
        cells = state(out)
        assert sorted(m for m, _ in cells.values()) == [OLD, OLD, NEW]
        assert all(steps == [median] * 2 for median, steps in cells.values())


def test_the_mutation_of_pruning_before_the_redo_loses_rows(tmp_path, monkeypatch):
    """The check above can fail: pruning the grid's rows before running (the old redo) and
    killing after the first cell leaves one row of three."""
    from membench.execute import sweep as sweep_module
    from membench.resume import prune_results

    out = finished_folder(tmp_path)
    real = sweep_module._unfinished

    def prune_first(cells, placement, out_dir, redo, estimates):
        prune_results(out_dir, lambda row: True)
        return real(cells, placement, out_dir, redo, estimates)

    monkeypatch.setattr(sweep_module, "_unfinished", prune_first)

    class KilledAfterOne(Canned):
        def run(self, cells, started):
            yield from list(super().run(cells, started))[:1]

    _sweep(CELLS, KilledAfterOne(NEW), out, None, redo=True, estimates=False)
    with pytest.raises(AssertionError):
        state(out)


# -- a full disk ----------------------------------------------------------------------------------
def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_append_leaves_the_file_as_it_was_and_says_what_it_needed(tmp_path, monkeypatch):
    append_result(tmp_path, CellResult(CELLS[0], "cpu", "x", step_ms=[1.0]))
    before = {name: (tmp_path / name).read_bytes() for name in ("cells.csv", "steps.csv")}
    monkeypatch.setattr(durable.os, "fsync", _no_space)  # written, then the disk says no
    with pytest.raises(durable.WriteError) as raised:
        append_result(tmp_path, CellResult(CELLS[1], "cpu", "x", step_ms=[1.0]))
    message = str(raised.value)
    assert f"in {tmp_path}" in message and "No space left on device" in message
    assert "the write needed" in message and "free there" in message and "\n" not in message
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_a_full_disk_mid_sweep_is_one_line_and_a_rerun_resumes(tmp_path, monkeypatch):
    out, cli = tmp_path / "out", CliRunner()
    args = [
        "sweep",
        "--arch",
        TINY_ARCH,
        "--res",
        str(TINY_RES),
        "--batch",
        "2,4",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--isolation",
        "none",
        "--out",
        str(out),
    ]
    real, synced = os.fsync, []

    def full_after_one_cell(fd):  # the disk fills up while the second cell's steps are written
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name == "steps.csv":
            synced.append(fd)
            if len(synced) > 1:
                _no_space()
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", full_after_one_cell)
    line = usage_error(cli.invoke(app, args))
    assert f"in {out}" in line and "No space left" in line and "rerun the same command" in line
    assert [r["batch"] for r in read(out / "cells.csv")] == ["2"]
    monkeypatch.undo()  # space freed
    again = cli.invoke(app, args)
    assert again.exit_code == 0 and "1 already finished, 1 to run" in again.output
    assert [r["batch"] for r in read(out / "cells.csv")] == ["2", "4"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 200 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Fill ``disk`` until about ``leave_bytes`` are free."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    filler.write_bytes(b"\0" * max(0, free - leave_bytes))
    return filler


def test_sweeping_into_a_real_full_disk(tiny_disk):
    cli = CliRunner()
    base = [
        "sweep",
        "--arch",
        TINY_ARCH,
        "--res",
        str(TINY_RES),
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--isolation",
        "none",
    ]
    filler = fill(tiny_disk, 0)
    fresh = tiny_disk / "fresh"
    line = usage_error(cli.invoke(app, [*base, "--batch", "2", "--out", str(fresh)]))
    assert "No space left on device" in line
    assert not fresh.exists()  # no folder, no stray lock file
    filler.unlink()
    out = tiny_disk / "out"
    assert cli.invoke(app, [*base, "--batch", "2", "--out", str(out)]).exit_code == 0
    before = (out / "cells.csv").read_bytes()
    filler = fill(tiny_disk, 0)
    line = usage_error(cli.invoke(app, [*base, "--batch", "2,4,6", "--out", str(out)]))
    assert f"in {out}" in line and "No space left on device" in line
    assert (out / "cells.csv").read_bytes() == before  # still there, still readable
    assert not [
        p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == durable.JOURNAL
    ]
    filler.unlink()
    again = cli.invoke(app, [*base, "--batch", "2,4,6", "--out", str(out)])
    assert again.exit_code == 0 and "1 already finished, 2 to run" in again.output
    assert sorted(r["batch"] for r in read(out / "cells.csv")) == ["2", "4", "6"]
    assert (out / LOCK_FILE).exists()  # as after any sweep that wrote rows


# -- resume is keyed on the cell ----------------------------------------------------------------
def _edit(out: Path, column: str, value: str) -> None:
    rows = read(out / "cells.csv")
    rows[0][column] = value
    with open(out / "cells.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _sweep_args(out: Path) -> list[str]:
    return [
        "sweep",
        "--arch",
        TINY_ARCH,
        "--res",
        str(TINY_RES),
        "--batch",
        "2",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--isolation",
        "none",
        "--out",
        str(out),
    ]


def test_text_in_a_numeric_column_neither_reruns_nor_duplicates_a_cell(tmp_path, monkeypatch):
    out, cli = tmp_path / "out", CliRunner()
    assert cli.invoke(app, _sweep_args(out)).exit_code == 0
    _edit(out, "peak_allocated_bytes", "lots")
    again = cli.invoke(app, _sweep_args(out))
    assert again.exit_code == 0 and "1 already finished, 0 to run" in again.output
    assert "warning:" in again.stderr and "peak_allocated_bytes 'lots'" in again.stderr
    assert len(read(out / "cells.csv")) == 1
    # The check can fail: keyed on every value parsing (the old row_key), the cell runs again.
    from membench import resume

    def old_row_key(row):
        try:
            cell = CellResult.from_row(row).cell
        except ValueError:
            return None
        return resume.cell_key(cell, row["device"], row["device_name"])

    monkeypatch.setattr(resume, "row_key", old_row_key)
    cli.invoke(app, _sweep_args(out))
    assert len(read(out / "cells.csv")) == 2


def test_a_row_whose_settings_do_not_read_is_refused_with_one_line(tmp_path):
    out, cli = tmp_path / "out", CliRunner()
    assert cli.invoke(app, _sweep_args(out)).exit_code == 0
    _edit(out, "batch", "two")
    before = (out / "cells.csv").read_bytes()
    line = usage_error(cli.invoke(app, _sweep_args(out)))
    assert "row 1 (cell bp_" in line and "batch 'two' is not a number" in line
    assert (out / "cells.csv").read_bytes() == before


def test_a_uncommitted_rewrite_is_dropped_and_a_committed_one_finished(tmp_path):
    (tmp_path / "cells.csv").write_text("old\n")
    (tmp_path / "cells.csv.tmp").write_text("new\n")
    recover(tmp_path)  # no journal: the rewrite never committed
    assert (tmp_path / "cells.csv").read_text() == "old\n"
    assert not (tmp_path / "cells.csv.tmp").exists()
    (tmp_path / "cells.csv.tmp").write_text("new\n")
    (tmp_path / durable.JOURNAL).write_text('["cells.csv"]')
    recover(tmp_path)
    assert (tmp_path / "cells.csv").read_text() == "new\n"
    assert not (tmp_path / durable.JOURNAL).exists()
