"""Durable writes to a results folder: nothing a user had is lost to a signal, a crash or a
full disk, at any point (docs/sweeps.md, "Interrupting and resuming").

- ``append_text``: an append either lands whole or not at all: after a failed write (a full
  disk, an I/O error) the file is cut back to its old length, so the rows already there stay
  readable; a kill in the middle leaves at most a partial last line, which readers ignore and
  the next append cuts (``repair_tail``).
- ``rewrite_files``: replace several files of one folder as one transaction. The new contents
  are written beside the old ones (``NAME.tmp``, fsynced), then a journal naming them is put in
  place atomically: that is the commit. The files are then renamed over the old ones and the
  journal removed. ``recover`` (called under the folder's lock before anything reads the
  folder for writing) finishes a committed rewrite a kill interrupted and drops an
  uncommitted one, so the folder holds either every old file or every new one.
- ``signals_deferred``: SIGINT and SIGTERM arriving during a commit are handled once it is
  done, so Ctrl-C never even needs the journal.
- ``WriteError``: a write that failed, as one line naming the folder, the error and the space
  the write needed; the CLI prints it and exits 2.

The standard library renames one file atomically, but has no transaction over two; the journal
here is the usual write-ahead answer, in a few lines, for the two CSVs a results row spans.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import InputError
from .units import format_size

JOURNAL = ".membench-rewrite"
TMP_SUFFIX = ".tmp"


class WriteError(InputError):
    """A results file that could not be written (disk full, read-only, I/O error); one line."""


def write_error(path: Path, err: OSError, needed: int) -> WriteError:
    """The one-line error for a failed write of ``needed`` bytes to ``path``."""
    folder = Path(path).parent
    try:
        free = format_size(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    reason = err.strerror or type(err).__name__
    return WriteError(
        f"cannot write {Path(path).name} in {folder}: {reason} (the write needed "
        f"{format_size(needed)}, {free} free there); rows already written are "
        "kept: free some space and rerun the same command to resume"
    )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def repair_tail(path: Path) -> None:
    """Cut a trailing partial line (a write interrupted by a crash) so appends stay aligned."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def append_text(path: Path, text: str) -> None:
    """Append ``text`` (whole lines) to ``path`` and fsync it; WriteError if it cannot be
    written, with the file cut back to what it held before."""
    data = text.encode("utf-8")
    size = path.stat().st_size if path.exists() else None
    try:
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        _cut_back(path, size)
        raise write_error(path, err, len(data)) from None


def _cut_back(path: Path, size: int | None) -> None:
    """Undo a failed append: the old length, or no file where there was none."""
    with contextlib.suppress(OSError):
        if size is None:
            path.unlink()
        else:
            os.truncate(path, size)


def write_text(path: Path, text: str) -> None:
    """Replace one file atomically (readers see the old file or the new one); WriteError."""
    rewrite_files(path.parent, {path.name: text})


def rewrite_files(folder: Path, contents: Mapping[str, str]) -> None:
    """Replace the files ``contents`` names (file name -> new text) in ``folder`` as one
    transaction: after a kill at any point the folder has all the old files or all the new
    ones (``recover``). WriteError, with nothing changed, where the new files cannot be
    written."""
    folder = Path(folder)
    written = []
    try:
        for name, text in contents.items():
            tmp = folder / (name + TMP_SUFFIX)
            written.append(tmp)
            _write_synced(tmp, text.encode("utf-8"))
        journal_tmp = folder / (JOURNAL + TMP_SUFFIX)
        written.append(journal_tmp)
        _write_synced(journal_tmp, json.dumps(list(contents)).encode())
    except OSError as err:
        for tmp in written:
            with contextlib.suppress(OSError):
                tmp.unlink()
        needed = sum(len(text.encode("utf-8")) for text in contents.values())
        raise write_error(written[-1], err, needed) from None
    with signals_deferred():
        os.replace(journal_tmp, folder / JOURNAL)  # the commit point
        _fsync_dir(folder)
        _finish(folder, list(contents))


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _finish(folder: Path, names: list[str]) -> None:
    """Move each committed file in place, then drop the journal."""
    for name in names:
        tmp = folder / (name + TMP_SUFFIX)
        if tmp.exists():
            os.replace(tmp, folder / name)
    _fsync_dir(folder)
    (folder / JOURNAL).unlink()
    _fsync_dir(folder)


def recover(folder: Path) -> None:
    """Bring ``folder`` back to one consistent state after a kill: finish a committed rewrite
    (its journal is in place), or drop the temporary files of one that never committed. Call
    it holding the folder's lock."""
    folder = Path(folder)
    journal = folder / JOURNAL
    if journal.exists():
        try:
            names = json.loads(journal.read_text())
        except ValueError:  # cut short: the commit never happened (it is an atomic rename)
            names = None
        if isinstance(names, list):
            with signals_deferred():
                _finish(folder, [str(name) for name in names])
            return
        journal.unlink()
    for tmp in folder.glob("*" + TMP_SUFFIX):
        if tmp.name.startswith((JOURNAL, "cells.csv", "steps.csv", "env.json")):
            tmp.unlink()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then act on the first that came (in the
    main thread only, where Python handles signals; elsewhere the block just runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # a handler installed outside Python (getsignal None) cannot be put back: left alone
    previous = {
        sig: signal.signal(sig, lambda number, frame: caught.append(number))
        for sig in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(sig) is not None
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])


__all__ = [
    "JOURNAL",
    "WriteError",
    "append_text",
    "recover",
    "repair_tail",
    "rewrite_files",
    "signals_deferred",
    "write_text",
]
