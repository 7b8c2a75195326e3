"""How far a timed cell can be trusted: its spread, what ran beside it, its rounds.

Every timed cell records (docs/sweeps.md, "Timings that say when they are noise"):

- ``step_ms_rel_iqr``: the interquartile range of its step times over their median, as
  ``torch.utils.benchmark``'s ``Measurement`` computes it (linear quantiles), and
  ``Measurement.meets_confidence``'s threshold: 10 % (``IQR_THRESHOLD``);
- what else ran on the machine during the timed steps (``membench.measure.machine_load``): the
  shares of the machine's CPU time used by the cell and by every other process, and the load
  average; past ``OTHERS_THRESHOLD`` of the machine the timing shares it with someone else;
- with ``rounds`` R > 1 (each round in a fresh worker process), the spread of the rounds'
  medians: the run-to-run noise ``membench compare`` judges throughput against.

``judge`` gives the verdict, ``stable`` or ``unstable``, with its reason; ``unknown`` where too
few steps were timed to have a spread. This module imports no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .schema import MEASURED_STATUSES, CellResult

# torch.utils.benchmark.utils.common: _IQR_WARN_THRESHOLD = 0.1, meets_confidence's default.
IQR_THRESHOLD = 0.10
# Assumption (membench's): other processes using a tenth of the machine's CPU time change a
# CPU step's time by about as much as the IQR threshold allows; past it the cell is unstable.
OTHERS_THRESHOLD = 0.10
# Assumption (membench's): on a CPU whose other processes used half its time or more during
# the timed steps, the cell got at most half of what it would alone, and what it got drifts
# with them beyond what any noise estimate of one sweep holds; membench compare then does not
# judge its throughput (measured: a rerun 3.7x slower, a 1-thread run 13x faster than 2
# threads, with others at 80-90 % of a 2-core machine; benchmarks/gate_noise.py).
SHARED_MACHINE = 0.5
# Rounds whose medians spread (max - min over their median) past this disagree.
ROUNDS_THRESHOLD = 0.10
# Fewer timed steps than this give no interquartile range worth a verdict.
MIN_STEPS = 4
STABLE, UNSTABLE, UNKNOWN = "stable", "unstable", "unknown"


def rel_iqr(times: Sequence[float]) -> float | None:
    """(p75 - p25) / median of ``times``, with linear quantiles, as torch.utils.benchmark's
    Measurement has them; None for no times or a zero median."""
    if not len(times):
        return None
    p25, median, p75 = np.percentile(np.asarray(times, dtype=float), [25, 50, 75])
    return float((p75 - p25) / median) if median > 0 else None


def round_medians(step_ms: Sequence[float], rounds: int) -> list[float]:
    """The median step time of each round: ``step_ms`` holds the rounds' steps in order, the
    same number each. One median (all steps) where they do not split evenly."""
    rounds = max(1, int(rounds or 1))
    if not len(step_ms):
        return []
    if rounds == 1 or len(step_ms) % rounds:
        return [statistics.median(step_ms)]
    size = len(step_ms) // rounds
    return [statistics.median(step_ms[i * size : (i + 1) * size]) for i in range(rounds)]


def rounds_spread(medians: Sequence[float]) -> float | None:
    """(max - min) / median of the rounds' medians; None for fewer than two rounds."""
    if len(medians) < 2:
        return None
    middle = statistics.median(medians)
    return (max(medians) - min(medians)) / middle if middle > 0 else None


def rounds_in(result: CellResult) -> int:
    """How many rounds ``result``'s step times hold: its cell's, once they are combined (one
    round's result, in its worker, holds one)."""
    cell = result.cell
    return cell.rounds if len(result.step_ms) == cell.rounds * cell.steps else 1


def judge(result: CellResult) -> None:
    """Set ``result``'s spread and verdict from its step times, rounds and the CPU time others
    used meanwhile (recorded by the protocol); nothing for a result without step times."""
    times = result.step_ms
    if not times:
        return
    result.step_ms_rel_iqr = rel_iqr(times)
    problems = []
    if len(times) < MIN_STEPS:
        result.stability = UNKNOWN
        result.stability_reason = f"{len(times)} timed step(s): too few for a spread"
        return
    spread = result.step_ms_rel_iqr
    if spread is not None and spread >= IQR_THRESHOLD:
        problems.append(f"relative IQR {spread:.0%} >= {IQR_THRESHOLD:.0%}")
    others = result.cpu_others
    if others is not None and others >= OTHERS_THRESHOLD:
        problems.append(
            f"other processes used {others:.0%} of the machine's CPU during the timed steps"
        )
    medians = round_medians(times, rounds_in(result))
    between = rounds_spread(medians)
    if between is not None and between >= ROUNDS_THRESHOLD:
        problems.append(f"its {len(medians)} rounds' medians spread {between:.0%}")
    result.stability = UNSTABLE if problems else STABLE
    if problems:
        result.stability_reason = "; ".join(problems)
        return
    parts = [f"relative IQR {spread:.1%} < {IQR_THRESHOLD:.0%}"]
    if others is not None:
        parts.append(f"others used {others:.0%} of the CPU")
    if between is not None:
        parts.append(f"{len(medians)} rounds within {between:.1%}")
    result.stability_reason = "; ".join(parts)


def combine_rounds(results: Sequence[CellResult]) -> CellResult:
    """One row from a cell's rounds (each measured in its own process), in order: the first
    failed round's row if one failed; else the first round's, with every round's step times
    (``steps.csv`` keeps them in order), the largest peak (the tracker's are equal), the mean
    load and CPU shares, and a verdict over all of them (``judge``)."""
    failed = [r for r in results if r.status not in MEASURED_STATUSES]
    if failed or len(results) == 1:
        return failed[0] if failed else results[0]
    first = replace(results[0])
    peaks = [r.peak_allocated_bytes for r in results if r.peak_allocated_bytes is not None]
    if peaks:
        top = max(results, key=lambda r: r.peak_allocated_bytes or 0)
        first.peak_allocated_bytes, first.breakdown = top.peak_allocated_bytes, top.breakdown
    for name in ("peak_reserved_bytes", "host_peak_rss_bytes", "nvml_used_bytes"):
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        setattr(first, name, max(values) if values else None)
    for name in ("load_average", "cpu_self", "cpu_others"):
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        setattr(first, name, statistics.fmean(values) if len(values) == len(results) else None)
    first.step_ms = [ms for r in results for ms in r.step_ms]
    judge(first)
    return first


def is_unstable(row) -> bool:
    """Whether a result or a ``cells.csv`` row (a dict or a pandas row) was judged unstable."""
    value = row.stability if isinstance(row, CellResult) else row.get("stability")
    return str(value or "") == UNSTABLE


__all__ = [
    "IQR_THRESHOLD",
    "MIN_STEPS",
    "OTHERS_THRESHOLD",
    "ROUNDS_THRESHOLD",
    "SHARED_MACHINE",
    "STABLE",
    "UNKNOWN",
    "UNSTABLE",
    "combine_rounds",
    "is_unstable",
    "judge",
    "rel_iqr",
    "round_medians",
    "rounds_in",
    "rounds_spread",
]
