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

Timing is judged against its own step-to-step noise, from ``steps.csv``: a cell's throughput has
regressed when the one-sided Mann-Whitney U test says NEW's step times are larger (p below
``alpha``) *and* the throughput drop estimated from the ratio of median step times exceeds the
threshold. A bootstrap confidence interval of that ratio is reported alongside. Without per-step
times, or with too few for the test to ever reach ``alpha`` (the smallest one-sided p of the exact
test is 1 / C(n1 + n2, n1): 1/20 for 3 + 3 steps, 1/70 for 4 + 4), the gate falls back to
``imgs_per_s`` against the threshold, and says so.

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
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.90
# Below this many steps on either side no test can tell noise from change; use imgs_per_s.
MIN_STEPS_FOR_TEST = 3
# Exact permutation distribution up to this many splits; the normal approximation beyond.
EXACT_TEST_MAX_SPLITS = 20_000


class CompareError(InputError):
    """Bad input to compare: a missing path, a file without the needed columns, bad thresholds."""


@dataclass
class TimingVerdict:
    """How one cell's throughput changed and how sure we are that it did."""

    method: str  # "mann-whitney" | "imgs_per_s" | "not compared"
    tput_change_pct: float | None = None  # negative: NEW is slower
    p_value: float | None = None
    ratio_ci: tuple[float, float] | None = None  # median step time NEW/BASE, bootstrap CI
    n_baseline: int = 0
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


def mann_whitney_greater(baseline: np.ndarray, new: np.ndarray) -> float:
    """One-sided p-value that ``new`` tends to be larger than ``baseline`` (Mann-Whitney U).

    Exact when there are at most EXACT_TEST_MAX_SPLITS splits of the pooled steps: scipy's exact
    null distribution of U without ties, and with ties (mid-ranks) a permutation test over every
    split; otherwise the normal approximation with tie and continuity corrections.
    """
    baseline, new = np.asarray(baseline, float), np.asarray(new, float)
    splits = math.comb(len(new) + len(baseline), len(new))
    if splits > EXACT_TEST_MAX_SPLITS:
        method = "asymptotic"
    elif len(np.unique(np.concatenate([new, baseline]))) < len(new) + len(baseline):
        # n_resamples >= the number of distinct splits makes scipy enumerate every one of them.
        method = stats.PermutationMethod(n_resamples=splits)
    else:
        method = "exact"
    result = stats.mannwhitneyu(new, baseline, alternative="greater", method=method)
    return float(result.pvalue)


def bootstrap_median_ratio_ci(
    baseline: np.ndarray,
    new: np.ndarray,
    confidence: float = CONFIDENCE,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of median(new) / median(baseline), each side resampled on its own;
    a fixed seed makes it reproducible."""
    result = stats.bootstrap(
        (np.asarray(new, float), np.asarray(baseline, float)),
        lambda new, base, axis: np.median(new, axis=axis) / np.median(base, axis=axis),
        paired=False,
        vectorized=True,
        n_resamples=samples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def judge_timing(
    baseline_ms: np.ndarray,
    new_ms: np.ndarray,
    max_tput_drop_pct: float,
    alpha: float = DEFAULT_ALPHA,
) -> TimingVerdict:
    """Regressed only if NEW is significantly slower and its throughput drop exceeds the
    threshold."""
    baseline_ms, new_ms = np.asarray(baseline_ms, float), np.asarray(new_ms, float)
    ratio = float(np.median(new_ms) / np.median(baseline_ms))
    change_pct = (1 / ratio - 1) * 100
    p_value = mann_whitney_greater(baseline_ms, new_ms)
    verdict = TimingVerdict(
        "mann-whitney",
        change_pct,
        p_value,
        bootstrap_median_ratio_ci(baseline_ms, new_ms),
        len(baseline_ms),
        len(new_ms),
    )
    verdict.regressed = p_value < alpha and -change_pct > max_tput_drop_pct
    if -change_pct > max_tput_drop_pct and not verdict.regressed:
        verdict.note = f"slower by more than the threshold, but within step noise (p={p_value:.3g})"
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


def can_reach_alpha(n_baseline: int, n_new: int, alpha: float) -> bool:
    """Whether the exact one-sided rank test on this many steps can give p < alpha at all: its
    smallest p is 1 / C(n1 + n2, n1), e.g. 1/20 for 3 + 3 steps and 1/70 for 4 + 4."""
    if min(n_baseline, n_new) < 1:
        return False
    return 1 / math.comb(n_baseline + n_new, n_new) < alpha


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

    if max_tput_drop_pct is None or base["is_estimate"] or new["is_estimate"]:
        return change
    if base["device_kind"] == "cpu" and base["device_name"] != new["device_name"]:
        change.timing = TimingVerdict(
            "not compared", note="different CPU models; timing not comparable"
        )
        return change
    base_ms, new_ms = _step_times(base_steps, base), _step_times(new_steps, new)
    if min(len(base_ms), len(new_ms)) >= MIN_STEPS_FOR_TEST and can_reach_alpha(
        len(base_ms), len(new_ms), alpha
    ):
        change.timing = judge_timing(base_ms, new_ms, max_tput_drop_pct, alpha)
    else:
        change.timing = _judge_imgs_per_s(
            base, new, max_tput_drop_pct, len(base_ms), len(new_ms), alpha
        )
    if change.timing.regressed:
        t = change.timing
        detail = f", p={t.p_value:.2g}" if t.p_value is not None else " (imgs_per_s, no noise test)"
        change.reasons.append(
            f"throughput {t.tput_change_pct:+.1f}% (allowed -{max_tput_drop_pct:g}%{detail})"
        )
    return change


def _judge_imgs_per_s(
    base: dict,
    new: dict,
    max_tput_drop_pct: float,
    n_base: int,
    n_new: int,
    alpha: float = DEFAULT_ALPHA,
) -> TimingVerdict:
    old, now = _number(base.get("imgs_per_s")), _number(new.get("imgs_per_s"))
    if min(n_base, n_new) < MIN_STEPS_FOR_TEST:
        why = f"too few per-step times ({n_base} vs {n_new})"
    else:
        why = (
            f"{n_base} vs {n_new} step times cannot reach p < {alpha:g} (smallest p "
            f"1/{math.comb(n_base + n_new, n_new)})"
        )
    note = f"{why}; compared imgs_per_s without a noise test"
    if old is None or now is None or old <= 0:
        return TimingVerdict("not compared", note="no throughput figure on one side")
    change_pct = (now / old - 1) * 100
    return TimingVerdict(
        "imgs_per_s",
        change_pct,
        n_baseline=n_base,
        n_new=n_new,
        regressed=-change_pct > max_tput_drop_pct,
        note=note,
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
    if max_tput_drop_pct is not None and (base_steps.empty or new_steps.empty):
        comparison.notes.append(
            "no steps.csv on one side: throughput compared from imgs_per_s, without a noise test"
        )
    return comparison


def _devices(cells: pd.DataFrame) -> str:
    names = sorted({f"{k} ({n})" for k, n in zip(cells["device_kind"], cells["device_name"])})
    return ", ".join(names)
