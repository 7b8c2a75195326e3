"""``membench fit``: the largest batch of a method that fits a device budget, by estimate.

``fit_batch`` searches ``estimate_cell``'s predictions (``membench.planning.estimate``): peak
memory is close to affine in the batch, so a search interpolates on the estimates and takes
about five of them instead of twenty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..archs import ArchError, validate_arch
from ..config import ConfigError, check_parameter_size
from ..runners import Runner, RunnerConfigError, UnknownMethodError, get_runner
from ..schema import ERROR, Cell, CellResult
from .estimate import DEVICE_KINDS, estimate_cell


@dataclass
class FitResult:
    """The largest batch of one method that fits a budget, by estimate.

    ``batch`` is None when even the smallest batch does not fit; ``capped`` is True when
    ``max_batch`` itself fits (the true limit may be higher). ``next_batch``/``next_peak_bytes``
    are the smallest searched batch above ``batch`` and its estimate (None when capped).
    ``micro_batch`` is set for runners that split the batch (bp-accum).
    """

    method: str
    arch: str
    res: int
    classes: int
    budget_bytes: int
    device_kind: str
    batch: int | None
    micro_batch: int | None
    peak_bytes: int | None
    next_batch: int | None
    next_peak_bytes: int | None
    capped: bool = False
    estimates: int = 0


def fit_batch(
    method: str,
    arch: str,
    res: int,
    budget_bytes: int,
    classes: int = 10,
    device_kind: str = "cuda",
    max_batch: int = 4096,
    micro_batch: int | None = None,
    seed: int = 0,
) -> FitResult:
    """Largest batch of ``method`` whose estimated peak fits ``budget_bytes``.

    An exponential search brackets the limit and a binary search narrows it, both accelerated by
    interpolating on the estimates (peak memory is close to affine in the batch, so a search
    takes about five estimates instead of twenty), with doubling and bisection as the fallbacks
    that bound it. Assumes the peak does not shrink as the batch grows. A batch of one that
    cannot train (BatchNorm) starts the search at two. Runners that split the batch (bp-accum)
    search the effective batch: with ``micro_batch`` over its multiples, without it over even
    batches with micro-batch batch/2 (the sweep's default). Raises ConfigError on invalid input.
    """
    runner_cls = check_fit_input(
        method, arch, res, budget_bytes, classes, device_kind, max_batch, micro_batch
    )
    splits = _splits_batch(runner_cls, micro_batch)
    unit = (micro_batch or 2) if splits else 1

    def cell_for(k: int) -> Cell:
        batch = k * unit
        mb = (micro_batch or runner_cls.default_micro_batch(batch)) if splits else None
        return Cell(method, arch, res, batch, mb, classes, seed=seed)

    max_k = max_batch // unit
    if max_k < 1:
        raise ConfigError(f"--max-batch {max_batch} is below the smallest batch {unit} of {method}")
    search = _BatchSearch(
        lambda k: estimate_cell(cell_for(k), device_kind, count_flops=False),
        budget_bytes,
        method,
        unit,
    )
    lo, hi = search.bracket(_first_runnable(search.peak, max_k), max_k)
    if lo:  # else the first runnable batch does not fit, and nothing below it can run
        lo, hi = search.narrow(lo, hi)
    best = cell_for(lo) if lo else None
    return FitResult(
        method=method,
        arch=arch,
        res=res,
        classes=classes,
        budget_bytes=budget_bytes,
        device_kind=device_kind,
        batch=best.batch if best else None,
        micro_batch=best.micro_batch if best else None,
        peak_bytes=search.peaks.get(lo),
        next_batch=hi * unit if hi is not None else None,
        next_peak_bytes=search.peaks.get(hi) if hi is not None else None,
        capped=hi is None,
        estimates=len(search.peaks),
    )


def _splits_batch(runner_cls: type[Runner], micro_batch: int | None) -> bool:
    """Whether a fit splits the batch: a micro-batch was given, or the runner splits by default
    (bp-accum: batch/2; ff-pipelined does not unless asked)."""
    return runner_cls.contract.micro_batch and (
        micro_batch is not None or runner_cls.default_micro_batch(2) is not None
    )


def fit_cell(fit: FitResult) -> Cell:
    """The cell of a fit's largest batch (ValueError when nothing fits)."""
    if fit.batch is None:
        raise ValueError(f"{fit.method}: no batch fits")
    return Cell(fit.method, fit.arch, fit.res, fit.batch, fit.micro_batch, fit.classes)


class _BatchSearch:
    """The search behind ``fit_batch``, over k = batch / unit, caching one estimate per k."""

    def __init__(
        self, estimate: Callable[[int], CellResult], budget_bytes: int, method: str, unit: int
    ):
        self.estimate, self.budget_bytes, self.method, self.unit = (
            estimate,
            budget_bytes,
            method,
            unit,
        )
        self.peaks: dict[int, int] = {}

    def peak(self, k: int) -> int:
        if k not in self.peaks:
            result = self.estimate(k)
            if result.status == ERROR:
                raise FitError(f"{self.method} at batch {k * self.unit}: {result.error}")
            self.peaks[k] = result.peak_allocated_bytes
        return self.peaks[k]

    def fits(self, k: int) -> bool:
        return self.peak(k) <= self.budget_bytes

    def interpolate(self, a: int, b: int) -> int | None:
        """Where the line through the estimates at a and b meets the budget (None if flat)."""
        if self.peak(b) == self.peak(a):
            return None
        return a + int((self.budget_bytes - self.peak(a)) * (b - a) / (self.peak(b) - self.peak(a)))

    def bracket(self, first: int, max_k: int) -> tuple[int, int | None]:
        """(lo, hi): lo the largest k known to fit (0: none), hi the smallest k known not to
        (None: up to max_k everything fits). Grows from the largest fitting k along the line
        through the last two fitting estimates, by at least one and at most 4x per step;
        doubles when there is no line yet."""
        lo, hi = (first, None) if self.fits(first) else (0, first)
        fitting = [lo] if lo else []
        while hi is None and lo < max_k:
            guess = 2 * lo
            if len(fitting) >= 2:
                line = self.interpolate(fitting[-2], fitting[-1])
                if line is not None:
                    guess = min(line, 4 * lo)
            guess = min(max(guess, lo + 1), max_k)
            if self.fits(guess):
                lo = guess
                fitting.append(guess)
            else:
                hi = guess
        return lo, hi

    def narrow(self, lo: int, hi: int | None) -> tuple[int, int | None]:
        """Interpolate inside the bracket and check the neighbour on the far side (memory is
        close to affine in the batch, so this usually ends the search); bisect whenever a round
        fails to halve the bracket, which bounds the search at about twice a binary search."""
        while hi is not None and hi - lo > 1:
            width = hi - lo
            line = self.interpolate(lo, hi) if lo else None
            guess = min(max(line if line is not None else (lo + hi) // 2, lo + 1), hi - 1)
            if self.fits(guess):
                lo, neighbour = guess, guess + 1
            else:
                hi, neighbour = guess, guess - 1
            if lo < neighbour < hi:
                if self.fits(neighbour):
                    lo = neighbour
                else:
                    hi = neighbour
            if hi - lo > 1 and hi - lo > width // 2:
                mid = (lo + hi) // 2
                if self.fits(mid):
                    lo = mid
                else:
                    hi = mid
        return lo, hi


class FitError(RuntimeError):
    """A method's runner could not be estimated, so no batch can be fitted for it."""


def _first_runnable(peak, max_k: int) -> int:
    """1, or 2 when a batch of one cannot train (BatchNorm in training mode, as in the FF
    runners' classifier, refuses a single sample); any other failure is the runner's."""
    try:
        peak(1)
        return 1
    except FitError:
        if max_k < 2:
            raise
        peak(2)
        return 2


def check_fit_input(
    method: str,
    arch: str,
    res: int,
    budget_bytes: int,
    classes: int = 10,
    device_kind: str = "cuda",
    max_batch: int = 4096,
    micro_batch: int | None = None,
) -> type[Runner]:
    """Validate ``fit_batch``'s input without estimating anything; ConfigError names the problem."""
    try:
        runner_cls = get_runner(method)
    except UnknownMethodError as err:
        raise ConfigError(str(err)) from None
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"unknown device kind {device_kind!r}; valid: {', '.join(DEVICE_KINDS)}")
    for value, option in (
        (res, "--res"),
        (classes, "--classes"),
        (max_batch, "--max-batch"),
        (budget_bytes, "--device-mem"),
    ):
        if value <= 0:
            raise ConfigError(f"{option} must be positive, got {value}")
    if micro_batch is not None and micro_batch <= 0:
        raise ConfigError(f"--micro-batch must be at least 1, got {micro_batch}")
    try:
        validate_arch(arch, res)
        check_parameter_size(arch)
        probe_batch = micro_batch or 2
        runner_cls.check_cell(
            arch, res, probe_batch, micro_batch if runner_cls.contract.micro_batch else None
        )
    except (ArchError, RunnerConfigError) as err:
        raise ConfigError(str(err)) from None
    if micro_batch is not None and not runner_cls.contract.micro_batch:
        raise ConfigError(
            f"--micro-batch applies only to methods that split the batch, not {method}"
        )
    unit = (micro_batch or 2) if _splits_batch(runner_cls, micro_batch) else 1
    if max_batch < unit:
        raise ConfigError(f"--max-batch {max_batch} is below the smallest batch {unit} of {method}")
    return runner_cls
