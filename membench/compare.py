"""Regression gating: compare a NEW results folder against a BASELINE, cell by cell.

Cells are matched by configuration (every setting of a cell that declares ``compare``: method,
arch, res, batch, micro_batch, classes, tooling, device budget; not seed, warmup or steps), device
kind and memory source. GPU cells also match on the GPU model (``device_name``): an H200
run against a laptop run is not a regression test. CPU cells do not: the tensor tracker's bytes do
not depend on the CPU model, so a CPU baseline gates memory on any CI machine; CPU timing is only
judged when both sides ran on the same CPU model.

Memory is compared against a percentage threshold. Tracker and estimate figures are
deterministic for the same code and torch version, so their default threshold is 0 %; the CUDA
allocator's peak can move a little with cuDNN's algorithm and workspace choices, so its default is
1 %. ``peak_allocated_bytes`` and, where both sides have it, each breakdown column are gated.

Timing is judged against run-to-run noise, never against one process's step-to-step noise:
the steps of one run share its process, its placement on the cores, the clock frequency and
the neighbours of that moment, and two runs of the same code differ by more than their steps
do (the same grid run twice on a quiet 2-core machine: -10.5 % throughput at p = 1e-6 on its
steps). A cell measured with ``--rounds`` R > 1 (each round in a fresh worker process) carries
R medians, one per run; the gate compares the two sides' log medians with Welch's t-test (both
sides with rounds) or against the other side's prediction interval (one side with rounds, the
other one run). A cell's throughput has regressed when NEW is slower with p below ``alpha``
*and* the drop, from the ratio of the geometric means of the medians, exceeds the threshold.
With one run on each side there is no estimate of run-to-run noise: throughput is then not
judged, and the output says so (``--rounds 3`` on both sides gates it). Nor is it judged for a
CPU cell during whose timed steps other processes used half the CPU or more on either side
(``stability.SHARED_MACHINE``): the load drifts beyond what one sweep's rounds can estimate.

Each folder may hold one row per (cell_id, device): ``steps.csv`` is keyed by those two columns
only, so a second run of a cell on the same device (another seed, warmup or step count) would pool
its step times with the first. Such a folder is refused as bad input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .errors import InputError
from .results import ResultsError, read_cells, read_steps
from .schema import (
    BREAKDOWN_COLUMNS,
    COMPARED_SETTINGS,
    FAILED_STATUSES,
    IDENTITY_COLUMNS,
    MEASURED_STATUSES,
    device_kind,
)
from .stability import SHARED_MACHINE, is_unstable, round_medians
from .units import format_size

GATED_MEMORY_COLUMNS = ["peak_allocated_bytes", *BREAKDOWN_COLUMNS]
# A cells.csv without these cannot be compared; any other column it lacks reads as empty (a
# setting: its default).
DESCRIBED_COLUMNS = [*IDENTITY_COLUMNS, "device_name", "memory_source"]
REQUIRED_COLUMNS = [*DESCRIBED_COLUMNS, "peak_allocated_bytes", "imgs_per_s"]

# Per memory source, the default allowed increase in percent (see the module docstring).
DEFAULT_MEM_INCREASE_PCT = {"tracker": 0.0, "estimate": 0.0, "cuda_allocator": 1.0}
FALLBACK_MEM_INCREASE_PCT = 1.0
DEFAULT_TPUT_DROP_PCT = 10.0
DEFAULT_ALPHA = 0.01
CONFIDENCE = 0.90  # of the interval of the median ratio shown beside the verdict
BETWEEN_RUNS = "between runs"  # TimingVerdict.method of a judged cell
NOT_JUDGED = "not judged"


class CompareError(InputError):
    """Bad input to compare: a missing path, a file without the needed columns, bad thresholds."""


@dataclass
class TimingVerdict:
    """How one cell's throughput changed and how sure we are that it did."""

    method: str  # "between runs" | "not judged" | "not compared"
    tput_change_pct: float | None = None  # negative: NEW is slower
    p_value: float | None = None
    ratio_ci: tuple[float, float] | None = None  # median step time NEW/BASE, CONFIDENCE
    n_baseline: int = 0  # rounds (runs) on each side
    n_new: int = 0
    regressed: bool = False
    note: str = ""


@dataclass
class CellChange:
    """One matched cell: its status, memory and timing on both sides, and the verdict."""

    cell_id: str
    device: str
    device_name: str
    memory_source: str
    status_baseline: str
    status_new: str
    peak_baseline: int | None = None
    peak_new: int | None = None
    mem_change_pct: float | None = None
    mem_threshold_pct: float | None = None
    timing: TimingVerdict = field(default_factory=lambda: TimingVerdict("not compared"))
    reasons: list[str] = field(default_factory=list)  # why it regressed; empty if it did not
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return bool(self.reasons)


@dataclass
class Comparison:
    """The outcome of comparing two results folders."""

    baseline: Path
    new: Path
    rows: list[CellChange]
    only_in_baseline: list[dict]
    only_in_new: list[dict]
    allow_missing: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[CellChange]:
        return [row for row in self.rows if row.regressed]

    @property
    def passed(self) -> bool:
        """No regression, and (unless allowed) no baseline cell missing from NEW."""
        return not self.regressions and (self.allow_missing or not self.only_in_baseline)


# --- statistics ---------------------------------------------------------------------------------


def between_runs(
    baseline: np.ndarray, new: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float, tuple[float, float]]:
    """(one-sided p that NEW's runs are slower, the ratio of the geometric means of the runs'
    median step times NEW/BASE, its ``confidence`` interval), on log medians (a slowdown is a
    factor). Both sides with two runs or more: Welch's t-test; one side with one run: that run
    against the other side's prediction interval (its spread times sqrt(1 + 1/n), n - 1
    degrees of freedom). ValueError where neither side has two runs: no run-to-run noise to
    judge against."""
    base, now = np.log(np.asarray(baseline, float)), np.log(np.asarray(new, float))
    if len(base) < 2 and len(now) < 2:
        raise ValueError("one run per side: no estimate of run-to-run noise")
    difference = float(now.mean() - base.mean())
    if len(base) >= 2 and len(now) >= 2:
        vb, vn = base.var(ddof=1) / len(base), now.var(ddof=1) / len(now)
        se = math.sqrt(vb + vn)
        dof = (vb + vn) ** 2 / (vb**2 / (len(base) - 1) + vn**2 / (len(now) - 1)) if se else 1.0
    else:
        runs = base if len(base) >= 2 else now
        se = float(runs.std(ddof=1)) * math.sqrt(1 + 1 / len(runs))
        dof = len(runs) - 1
    if se == 0:  # runs that agree exactly: any difference is beyond their noise
        p = 0.0 if difference > 0 else 1.0
        return p, math.exp(difference), (math.exp(difference), math.exp(difference))
    p = float(stats.t.sf(difference / se, dof))
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * se
    return p, math.exp(difference), (math.exp(difference - half), math.exp(difference + half))


def judge_between_runs(
    baseline_medians: np.ndarray,
    new_medians: np.ndarray,
    max_tput_drop_pct: float,
    alpha: float = DEFAULT_ALPHA,
) -> TimingVerdict:
    """Regressed only if NEW's runs are significantly slower than run-to-run noise allows and
    its throughput drop exceeds the threshold (the module docstring)."""
    p_value, ratio, interval = between_runs(baseline_medians, new_medians)
    change_pct = (1 / ratio - 1) * 100
    verdict = TimingVerdict(
        BETWEEN_RUNS,
        change_pct,
        p_value,
        interval,
        len(baseline_medians),
        len(new_medians),
    )
    verdict.regressed = p_value < alpha and -change_pct > max_tput_drop_pct
    if -change_pct > max_tput_drop_pct and not verdict.regressed:
        verdict.note = (
            f"slower by more than the threshold, but within run-to-run noise (p={p_value:.3g}, "
            f"{len(baseline_medians)} vs {len(new_medians)} run(s))"
        )
    return verdict


# --- matching and comparing ---------------------------------------------------------------------


def _load(path: Path, side: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A side's cells and steps, typed by the shared reader; CompareError for bad input."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{side} {path} does not exist")
    try:
        cells = read_cells(path, required=REQUIRED_COLUMNS)
        steps = read_steps(path)
    except ResultsError as err:
        raise CompareError(f"{side}: {err}") from None
    cells["device_kind"] = cells["device"].map(device_kind)
    # A CPU's model does not change tracker bytes, so CPU cells match across CPU models.
    cells["device_match"] = np.where(cells["device_kind"] == "cpu", "", cells["device_name"])
    cells["config_key"] = [_config_key(row) for row in cells.to_dict("records")]
    # steps.csv is keyed by (cell_id, device) only: two rows of one cell on one device (another
    # seed, warmup or step count, or a rerun) would pool their step times.
    for key, what in (
        (["cell_id", "device"], "cell_id and device"),
        (["config_key", "memory_source"], "configuration and device"),
    ):
        duplicated = cells.duplicated(key, keep=False)
        if duplicated.any():
            first = cells.loc[duplicated].iloc[0]
            raise CompareError(
                f"{side} {path} has more than one row with the same {what} (cell {first['cell_id']}"
                f" on {first['device']}); compare one run per folder"
            )
    return cells, steps


def _config_key(row: dict) -> tuple:
    def norm(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    return tuple(norm(row[c]) for c in COMPARED_SETTINGS) + (
        row["device_kind"],
        bool(row["is_estimate"]),
        row["device_match"],
    )


def _pair(
    base: pd.DataFrame, new: pd.DataFrame
) -> tuple[list[tuple[dict, dict]], list[dict], list[dict]]:
    """Match rows on configuration, device and memory source.

    A failed row (oom/error/timeout) has no memory source, so it is matched to the other side's
    row of the same configuration and device whatever its source: an ok cell that now OOMs must be
    seen as a regression, not as two unrelated cells.
    """
    base_rows = base.to_dict("records")
    new_rows = new.to_dict("records")
    pairs, used_new = [], set()
    unmatched_base = []
    new_index = {(r["config_key"], r["memory_source"]): i for i, r in enumerate(new_rows)}
    for row in base_rows:
        i = new_index.get((row["config_key"], row["memory_source"]))
        if i is not None and i not in used_new:
            pairs.append((row, new_rows[i]))
            used_new.add(i)
        else:
            unmatched_base.append(row)
    only_in_baseline = []
    for row in unmatched_base:
        candidates = [
            i
            for i, r in enumerate(new_rows)
            if i not in used_new
            and r["config_key"] == row["config_key"]
            and (not r["memory_source"] or not row["memory_source"])
        ]
        if len(candidates) == 1:
            pairs.append((row, new_rows[candidates[0]]))
            used_new.add(candidates[0])
        else:
            only_in_baseline.append(row)
    only_in_new = [r for i, r in enumerate(new_rows) if i not in used_new]
    return pairs, only_in_baseline, only_in_new


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _pct_change(old: float, new: float) -> float:
    if old == 0:
        return 0.0 if new == 0 else math.inf
    return (new / old - 1) * 100


def _step_times(steps: pd.DataFrame, row: dict) -> np.ndarray:
    mask = (steps["cell_id"] == str(row["cell_id"])) & (steps["device"] == str(row["device"]))
    times = steps.loc[mask, "step_ms"].to_numpy(dtype=float)
    return times[np.isfinite(times)]


def run_medians(steps: pd.DataFrame, row: dict) -> np.ndarray:
    """The median step time of each run (round) of a row: its steps.csv times cut into its
    ``rounds`` (an earlier membench's row: one); none without step times."""
    times = _step_times(steps, row)
    rounds = _number(row.get("rounds"))
    return np.asarray(round_medians(list(times), int(rounds) if rounds else 1), dtype=float)


def _compare_pair(
    base: dict,
    new: dict,
    base_steps: pd.DataFrame,
    new_steps: pd.DataFrame,
    max_mem_increase_pct: float | None,
    max_tput_drop_pct: float | None,
    alpha: float,
) -> CellChange:
    change = CellChange(
        str(new["cell_id"]),
        str(new["device"]),
        str(new["device_name"]),
        new["memory_source"] or base["memory_source"],
        base["status"],
        new["status"],
    )
    base_ok, new_ok = (row["status"] in MEASURED_STATUSES for row in (base, new))
    if base_ok and new["status"] in FAILED_STATUSES:
        change.reasons.append(
            f"was {base['status']}, now {new['status']}: {str(new.get('error', ''))[:120]}"
        )
        return change
    if not base_ok and new_ok:
        change.notes.append(f"was {base['status']}, now {new['status']}")
        return change
    if not (base_ok and new_ok):
        change.notes.append(f"{base['status']} on both sides; nothing to compare")
        return change

    _compare_memory(change, base, new, max_mem_increase_pct)
    if max_tput_drop_pct is not None and not (base["is_estimate"] or new["is_estimate"]):
        _compare_timing(change, base, new, (base_steps, new_steps), max_tput_drop_pct, alpha)
    return change


def _compare_memory(
    change: CellChange, base: dict, new: dict, max_mem_increase_pct: float | None
) -> None:
    """Every gated memory column against its threshold (exact for the tracker)."""
    source = change.memory_source
    threshold = (
        max_mem_increase_pct
        if max_mem_increase_pct is not None
        else DEFAULT_MEM_INCREASE_PCT.get(source, FALLBACK_MEM_INCREASE_PCT)
    )
    change.mem_threshold_pct = threshold
    change.peak_baseline = _as_int(base["peak_allocated_bytes"])
    change.peak_new = _as_int(new["peak_allocated_bytes"])
    for column in GATED_MEMORY_COLUMNS:
        old, now = _number(base.get(column)), _number(new.get(column))
        if old is None or now is None:
            continue
        pct = _pct_change(old, now)
        if column == "peak_allocated_bytes":
            change.mem_change_pct = pct
        if pct > threshold:
            change.reasons.append(
                f"{column} {int(old):,} -> {int(now):,} B ({format_size(old)} -> "
                f"{format_size(now)},"
                f" +{pct:.2f}%, allowed {threshold:g}%, {source})"
            )


def _compare_timing(
    change: CellChange,
    base: dict,
    new: dict,
    steps: tuple[pd.DataFrame, pd.DataFrame],
    max_tput_drop_pct: float,
    alpha: float,
) -> None:
    """Throughput against run-to-run noise (the module docstring); unstable sides noted."""
    if base["device_kind"] == "cpu" and base["device_name"] != new["device_name"]:
        change.timing = TimingVerdict(
            "not compared", note="different CPU models; timing not comparable"
        )
        return
    for side, row in (("baseline", base), ("new", new)):
        if is_unstable(row):
            change.notes.append(f"timing unstable on {side}: {row.get('stability_reason')}")
    base_runs, new_runs = run_medians(steps[0], base), run_medians(steps[1], new)
    if len(base_runs) and len(new_runs) and max(len(base_runs), len(new_runs)) >= 2:
        change.timing = judge_between_runs(base_runs, new_runs, max_tput_drop_pct, alpha)
        busy = _shared_machine(base, new)
        if busy:  # shown, never judged: no noise estimate holds on a machine that busy
            change.timing.method, change.timing.regressed = NOT_JUDGED, False
            change.timing.note = f"throughput not judged: {busy} (gate timing on a quieter runner)"
    else:
        change.timing = _not_judged(base, new, len(base_runs), len(new_runs))
    if change.timing.regressed:
        t = change.timing
        change.reasons.append(
            f"throughput {t.tput_change_pct:+.1f}% (allowed -{max_tput_drop_pct:g}%, "
            f"p={t.p_value:.2g} between {t.n_baseline} and {t.n_new} run(s))"
        )


def _shared_machine(base: dict, new: dict) -> str:
    """Why a CPU cell's timing cannot be judged: other processes used ``SHARED_MACHINE`` of
    the CPU or more during a side's timed steps ('' where neither did)."""
    if base["device_kind"] != "cpu":
        return ""
    for side, row in (("baseline", base), ("new", new)):
        others = _number(row.get("cpu_others"))
        if others is not None and others >= SHARED_MACHINE:
            return f"other processes used {others:.0%} of the CPU during the {side}'s timed steps"
    return ""


def _not_judged(base: dict, new: dict, n_base: int, n_new: int) -> TimingVerdict:
    """One run on each side (or no step times): the change is shown, never judged."""
    old, now = _number(base.get("imgs_per_s")), _number(new.get("imgs_per_s"))
    change_pct = (now / old - 1) * 100 if old and now is not None else None
    why = (
        "no step times on one side"
        if not (n_base and n_new)
        else "one run on each side, so no estimate of run-to-run noise"
    )
    return TimingVerdict(
        NOT_JUDGED,
        change_pct,
        n_baseline=n_base,
        n_new=n_new,
        note=f"throughput not judged: {why} (sweep both with --rounds 3 to gate it)",
    )


def _as_int(value) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _describe(row: dict) -> dict:
    return {column: row.get(column) for column in DESCRIBED_COLUMNS}


def compare_results(
    baseline: Path,
    new: Path,
    max_mem_increase_pct: float | None = None,
    max_tput_drop_pct: float | None = DEFAULT_TPUT_DROP_PCT,
    *,
    alpha: float = DEFAULT_ALPHA,
    allow_missing: bool = False,
) -> Comparison:
    """Compare two results (folders or cells.csv files); see the module docstring for the rules.

    ``max_mem_increase_pct=None`` uses the per-source defaults (tracker/estimate 0 %, CUDA
    allocator 1 %); a number applies to every source. ``max_tput_drop_pct=None`` turns timing
    gating off (memory-only gate). ``allow_missing`` lets baseline cells absent from NEW pass.
    Raises CompareError on bad input.
    """
    for name, value in (
        ("max memory increase", max_mem_increase_pct),
        ("max throughput drop", max_tput_drop_pct),
    ):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise CompareError(f"{name} must be a percentage of 0 or more, got {value}")
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must be between 0 and 1, got {alpha}")
    base_cells, base_steps = _load(baseline, "baseline")
    new_cells, new_steps = _load(new, "new")
    pairs, only_base, only_new = _pair(base_cells, new_cells)
    rows = [
        _compare_pair(b, n, base_steps, new_steps, max_mem_increase_pct, max_tput_drop_pct, alpha)
        for b, n in pairs
    ]
    comparison = Comparison(
        Path(baseline),
        Path(new),
        rows,
        [_describe(r) for r in only_base],
        [_describe(r) for r in only_new],
        allow_missing,
    )
    if not pairs and len(base_cells) and len(new_cells):
        comparison.notes.append(
            "no cell matched: baseline ran on "
            + _devices(base_cells)
            + ", new on "
            + _devices(new_cells)
            + " (GPU cells match only on the same GPU model)"
        )
    base_torch, new_torch = (
        set(cells["torch_version"]) - {""} for cells in (base_cells, new_cells)
    )
    if base_torch and new_torch and base_torch != new_torch:
        comparison.notes.append(
            f"torch differs (baseline {', '.join(sorted(base_torch))}, new "
            f"{', '.join(sorted(new_torch))});"
            " memory figures can move with torch itself"
        )
    if max_tput_drop_pct is not None and any(r.timing.method == NOT_JUDGED for r in rows):
        comparison.notes.append(
            f"throughput of {sum(r.timing.method == NOT_JUDGED for r in rows)} cell(s) not "
            "judged: a change of throughput is judged against run-to-run noise, which needs "
            "two runs or more (--rounds) on one side at least; memory is gated exactly"
        )
    return comparison


def _devices(cells: pd.DataFrame) -> str:
    names = sorted({f"{k} ({n})" for k, n in zip(cells["device_kind"], cells["device_name"])})
    return ", ".join(names)
