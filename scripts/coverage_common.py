"""What the coverage scripts (``model_coverage.py``, ``timm_coverage.py``) share: one model's
CUDA estimate as a ``Coverage`` row (estimated, refused up front, or failed, with a one-line
reason), the same work bounded in time in a child process, a CSV that grows a row at a time,
and the text a table shows.

A row is ``refused`` when ``validate_arch`` refuses the model at its resolution (what a sweep
does before any cell runs), ``estimated`` (or ``oom``) when ``estimate_cell`` gives a peak,
``error`` when the estimate fails, ``timeout`` when the child ran out of time.
"""

from __future__ import annotations

import csv
import dataclasses
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from membench.errors import one_line
from membench.execute.children import exit_text

REFUSED, TIMEOUT, ERROR = "refused", "timeout", "error"
# What the forkserver imports once, so a child per model costs a fork (timm takes seconds).
PRELOAD = [
    "torch",
    "timm",
    "torchvision",
    "membench.planning.estimate",
    "membench.archs.probe",
    "coverage_common",
]


@dataclass
class Coverage:
    """One estimate of one model: what was estimated (``arch`` at ``res``, ``method``, batch
    ``batch``), its status, peak (bytes), FLOPs per image of a step, the seconds the estimate
    took (FLOP count included), the model's parameters where known and, for anything but an
    estimate, a one-line reason."""

    family: str
    arch: str
    res: int
    method: str
    batch: int
    status: str
    peak_bytes: int | None = None
    flops_per_image: float | None = None
    seconds: float | None = None
    parameters: int | None = None
    reason: str = ""

    @property
    def estimates(self) -> bool:
        return self.status in ("estimated", "oom")


def estimate_model(
    arch: str,
    res: int,
    method: str,
    *,
    family: str = "",
    batch: int = 2,
    classes: int = 1000,
    count_flops: bool = True,
) -> Coverage:
    """``arch``'s CUDA estimate at ``res`` (fp32, one warmup and one step), or the reason there
    is none: ``validate_arch``'s refusal, the estimate's error. Never raises for the model."""
    from membench.archs import ArchError, validate_arch
    from membench.planning.estimate import estimate_cell
    from membench.schema import Cell

    row = Coverage(family, arch, res, method, batch, ERROR)
    try:
        validate_arch(arch, res)
    except ArchError as err:
        row.status, row.reason = REFUSED, str(err)
        return row
    start = time.perf_counter()
    result = estimate_cell(
        Cell(method, arch, res, batch, classes=classes, warmup=1, steps=1),
        "cuda",
        count_flops=count_flops,
    )
    row.seconds = time.perf_counter() - start
    row.status, row.reason = result.status, (result.error or "")
    row.peak_bytes = result.peak_allocated_bytes
    if result.flops_per_step:
        row.flops_per_image = result.flops_per_step / batch
    return row


def peak_text(row: Coverage) -> str:
    """The peak in MiB, or the status and the head of its reason."""
    return result_text(row.status, row.peak_bytes, row.reason)


def result_text(status: str, peak_bytes: int | None, reason: str | None) -> str:
    """A peak in MiB where there is one (an estimate, a measurement: status ``ok``), else the
    status and the head of its reason."""
    if status in ("ok", "estimated", "oom") and peak_bytes is not None:
        return f"{peak_bytes / 2**20:,.0f} MiB"
    return f"{status}: {short_reason(reason or '', 80)}"


def short_reason(reason: str, limit: int = 160) -> str:
    """A reason for a table cell: one line, without where it was raised, cut at ``limit``
    characters."""
    text = " ".join(reason.split(" | at ")[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- a CSV that grows a row at a time --------------------------------------------------------
FIELDS = [field.name for field in dataclasses.fields(Coverage)]


def read_rows(path: Path) -> list[Coverage]:
    """The rows written so far ([] without a file)."""
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [_row(record) for record in csv.DictReader(handle)]


def _row(record: dict[str, str]) -> Coverage:
    def number(text: str, kind):
        return kind(text) if text not in ("", "None") else None

    return Coverage(
        record["family"],
        record["arch"],
        int(record["res"]),
        record["method"],
        int(record["batch"]),
        record["status"],
        number(record["peak_bytes"], int),
        number(record["flops_per_image"], float),
        number(record["seconds"], float),
        number(record["parameters"], int),
        record["reason"],
    )


def append_row(path: Path, row: Coverage) -> None:
    """Add ``row`` to the CSV at ``path`` (its header first, for a new file), flushed at once:
    an interrupted run keeps every row it finished."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(dataclasses.asdict(row))


# -- bounded in time ---------------------------------------------------------------------------
def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def _child(conn, function: Callable, args: tuple) -> None:
    import torch

    torch.set_num_threads(2)
    try:
        function(*args, conn.send)
        conn.send(("done", ""))
    except BaseException as err:  # the model's code may raise anything: it ends this child
        conn.send(("failed", one_line(err)))


def run_bounded(
    function: Callable, args: tuple, timeout_s: float, receive: Callable[[object], None]
) -> str:
    """Run ``function(*args, send)`` in a child process for at most ``timeout_s`` seconds;
    every value it sends reaches ``receive`` as it comes. '' when it finished, else why not
    (it raised, it died, it ran out of time: then it is killed)."""
    context = _context()
    conn, child_conn = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child_conn, function, args), daemon=True)
    process.start()  # the child imports the calling script again, as __mp_main__: cheap
    child_conn.close()  # ours gone: a dead child reads as EOF
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"no result within {timeout_s:g} s; killed"
            if not wait([conn], left):
                continue
            try:
                message = conn.recv()
            except (EOFError, OSError):
                process.join(5)
                return f"the child process ended ({exit_text(process)})"
            if isinstance(message, tuple) and message and message[0] in ("done", "failed"):
                return message[1]
            receive(message)
    finally:
        if process.is_alive():
            process.kill()
        process.join(10)
        conn.close()
