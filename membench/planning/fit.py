"""``membench fit``: the largest batch of a method that fits a device budget, by estimate.

``fit_batch`` searches ``estimate_cell``'s predictions (``membench.planning.estimate``): peak
memory is close to affine in the batch, so a search interpolates on the estimates and takes
about five of them instead of twenty. ``fit_methods`` runs the searches of several methods side
by side, each in a worker process of its own (``membench.planning.parallel``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..archs import ArchError, validate_arch
from ..config import ConfigError, check_parameter_size
from ..execute.local import default_jobs
from ..measure.flops import throughput_bound
from ..runners import Runner, RunnerConfigError, UnknownMethodError, available_methods, get_runner
from ..schema import ERROR, ESTIMATE_KINDS, OOM, Cell, CellResult
from .device_profiles import device_profile_of
from .device_total import deciding_term, judged_bytes
from .parallel import Estimator, estimators

DEVICE_KINDS = ESTIMATE_KINDS


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
    flops_per_step: int | None = None  # of ``batch``'s step, counted by its estimate
    # docs/device-total.md: what the peaks are (schema.FIT_BY), and the term that decides the
    # next batch does not fit (device_total.deciding_term; '' when capped or without terms).
    fit_by: str = "total"
    next_term: str = ""
    settings: dict = field(default_factory=dict)  # the cell's other settings (seq, tooling)

    def bound(self, peak_tflops: float) -> float | None:
        """imgs/s of the largest batch at a GPU's peak (``flops.throughput_bound``); None when
        nothing fits or its FLOPs are unknown."""
        if self.batch is None or not self.flops_per_step:
            return None
        return throughput_bound(self.flops_per_step, self.batch, peak_tflops)


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
    estimate: Estimator | None = None,
    profile=None,
    fit_by: str = "total",
    **settings,
) -> FitResult:
    """Largest batch of ``method`` whose estimated peak fits ``budget_bytes``: by default the
    device total on ``profile``'s card (a device profile or its name; ``fit_by`` picks the
    allocator's reserve or the tensors' peak instead, docs/device-total.md); a CPU estimate has
    only the tensors' peak. ``settings``: the cell's other settings (a token model's ``seq``,
    ``objective``; tooling such as ``precision``, ``grads``, ``optimizer_state``), by field name.

    An exponential search brackets the limit and a binary search narrows it, both accelerated by
    interpolating on the estimates (peak memory is close to affine in the batch, so a search
    takes about five estimates instead of twenty), with doubling and bisection as the fallbacks
    that bound it. Assumes the peak does not shrink as the batch grows. A batch of one that
    cannot train (BatchNorm) starts the search at two. Runners that split the batch (bp-accum)
    search the effective batch: with ``micro_batch`` over its multiples, without it over even
    batches with micro-batch batch/2 (the sweep's default). ``estimate``: what estimates a cell
    (a worker's, ``planning.parallel.estimators``); by default ``estimate_cell`` here. Raises
    ConfigError on invalid input.
    """
    runner_cls = check_fit_input(
        method, arch, res, budget_bytes, classes, device_kind, max_batch, micro_batch, **settings
    )
    splits = _splits_batch(runner_cls, micro_batch)
    unit = (micro_batch or 2) if splits else 1

    def cell_for(k: int) -> Cell:
        batch = k * unit
        mb = (micro_batch or runner_cls.default_micro_batch(batch)) if splits else None
        return Cell(
            method,
            arch,
            res,
            batch,
            mb,
            classes,
            seed=seed,
            device_mem_bytes=budget_bytes,
            **settings,
        )

    max_k = max_batch // unit
    if max_k < 1:
        raise ConfigError(f"--max-batch {max_batch} is below the smallest batch {unit} of {method}")
    fit_by = fit_by if device_kind == "cuda" else "allocated"
    if estimate is None:
        from .estimate import estimate_cell

        def estimate(cell: Cell) -> CellResult:
            return estimate_cell(cell, device_kind, profile=profile, fit_by=fit_by)

    search = _BatchSearch(lambda k: estimate(cell_for(k)), budget_bytes, method, unit, fit_by)
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
        flops_per_step=search.flops_of(lo),
        fit_by=fit_by,
        next_term=search.deciding_term(hi),
        settings=dict(settings),
    )


@dataclass
class SeqFitResult:
    """The longest sequence of a token model that fits a budget at one batch, by estimate:
    ``seq`` None when even one token does not fit, ``capped`` when the longest the model has
    (its positions, or ``max_seq``) fits."""

    method: str
    arch: str
    batch: int
    budget_bytes: int
    device_kind: str
    seq: int | None
    peak_bytes: int | None
    next_seq: int | None
    next_peak_bytes: int | None
    capped: bool = False
    estimates: int = 0
    settings: dict = field(default_factory=dict)
    fit_by: str = "total"  # as FitResult's
    next_term: str = ""


def fit_seq(
    method: str,
    arch: str,
    batch: int,
    budget_bytes: int,
    classes: int = 10,
    device_kind: str = "cuda",
    max_seq: int | None = None,
    seed: int = 0,
    profile=None,
    fit_by: str = "total",
    **settings,
) -> SeqFitResult:
    """Longest sequence of a token model (``hf:``) whose estimated peak at ``batch`` fits
    ``budget_bytes``, up to ``max_seq`` or the positions the model has: the batch search's
    bracket and narrowing over the sequence length (memory grows with it, close to linearly
    where attention saves no S x S matrix, and the search only assumes it never shrinks).
    ``profile`` and ``fit_by``: what the budget judges, as ``fit_batch``'s."""
    from ..archs import ArchError
    from ..archs.hf import max_sequence

    try:
        longest = max_seq or max_sequence(arch)
    except ArchError as err:
        raise ConfigError(str(err)) from None
    if longest is None:
        raise ConfigError(f"{arch} names no longest sequence: give --max-seq")
    check_fit_input(
        method, arch, None, budget_bytes, classes, device_kind, batch, None, seq=1, **settings
    )

    def cell_for(seq: int) -> Cell:
        return Cell(
            method,
            arch,
            None,
            batch,
            None,
            classes,
            seed=seed,
            seq=seq,
            device_mem_bytes=budget_bytes,
            **settings,
        )

    from .estimate import estimate_cell

    fit_by = fit_by if device_kind == "cuda" else "allocated"
    search = _BatchSearch(
        lambda seq: estimate_cell(cell_for(seq), device_kind, profile=profile, fit_by=fit_by),
        budget_bytes,
        method,
        1,
        fit_by,
    )
    lo, hi = search.bracket(1, longest)
    lo, hi = search.narrow(lo, hi)
    return SeqFitResult(
        method=method,
        arch=arch,
        batch=batch,
        budget_bytes=budget_bytes,
        device_kind=device_kind,
        seq=lo or None,
        peak_bytes=search.peaks.get(lo),
        next_seq=hi,
        next_peak_bytes=search.peaks.get(hi) if hi is not None else None,
        capped=hi is None,
        estimates=len(search.peaks),
        settings=dict(settings),
        fit_by=fit_by,
        next_term=search.deciding_term(hi),
    )


def fit_methods(
    methods: list[str],
    arch: str,
    res: int,
    budget_bytes: int,
    *,
    jobs: int | None = None,
    progress: Callable[[int, int, FitResult | FitError], None] | None = None,
    micro_batch: int | None = None,
    **options,
) -> list[FitResult | FitError]:
    """``fit_batch`` of each method (``options``: its keywords but ``method`` and
    ``estimate``; a ``micro_batch`` goes to the methods that split the batch only), ``jobs``
    searches at once (default: one per core), each in a worker process of its own; the results
    (a FitError for a method that cannot be estimated) in the order of ``methods``,
    ``progress(done, total, result)`` as each search ends."""
    jobs = min(jobs or default_jobs(), len(methods))
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in enumerate(methods):
        todo.put(item)
    results: list[FitResult | FitError | None] = [None] * len(methods)
    lock = threading.Lock()
    done = [0]

    def search(estimate: Estimator) -> None:
        while True:
            try:
                index, method = todo.get_nowait()
            except queue.Empty:
                return
            own = {**options, "micro_batch": micro_batch if splits_batch(method) else None}
            try:
                found = fit_batch(method, arch, res, budget_bytes, estimate=estimate, **own)
            except FitError as err:
                found = err
            with lock:
                results[index], done[0] = found, done[0] + 1
                if progress is not None:
                    progress(done[0], len(methods), found)

    kind = options.get("device_kind", "cuda")
    profile = device_profile_of(options.get("profile"))
    fit_by = options.get("fit_by", "total") if kind == "cuda" else "allocated"
    with estimators(kind, list(methods), jobs, profile.path or profile.name, fit_by) as pool:
        if len(pool) == 1:
            search(pool[0])
        else:
            threads = [threading.Thread(target=search, args=(e,), daemon=True) for e in pool]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    return results


def splits_batch(method: str) -> bool:
    """Whether ``method``'s runner splits the batch (takes ``--micro-batch``); False for a name
    no package registers (``fit_batch`` reports it with the valid choices)."""
    try:
        return get_runner(method).contract.micro_batch
    except Exception:
        return False


def methods_for(arch: str, cell_settings: dict | None = None) -> list[str]:
    """Every registered one-device method that accepts ``arch`` (torchvision models exclude
    layer-wise ones; a token model's, those that train its objective, ``cell_settings`` giving
    its ``seq`` and ``objective``): what ``fit`` searches when no method is named."""
    cell_settings = cell_settings or {}
    methods = []
    for name in available_methods():
        try:
            runner = get_runner(name)
            runner.check_cell(arch, 32, 2, None)
            if cell_settings.get("seq") is not None:
                runner.check_input(Cell(name, arch, None, 2, **cell_settings))
        except RunnerConfigError:
            continue
        if not runner.contract.spans_devices:  # fit plans one device
            methods.append(name)
    return methods


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
    return Cell(
        fit.method, fit.arch, fit.res, fit.batch, fit.micro_batch, fit.classes, **fit.settings
    )


class _BatchSearch:
    """The search behind ``fit_batch``, over k = batch / unit, caching one estimate per k."""

    def __init__(
        self,
        estimate: Callable[[int], CellResult],
        budget_bytes: int,
        method: str,
        unit: int,
        fit_by: str = "allocated",
    ):
        self.estimate, self.budget_bytes, self.method, self.unit = (
            estimate,
            budget_bytes,
            method,
            unit,
        )
        self.fit_by = fit_by
        self.peaks: dict[int, int] = {}
        self.results: dict[int, CellResult] = {}

    def peak(self, k: int) -> int:
        """The figure the budget judges at k (schema.FIT_BY)."""
        if k not in self.peaks:
            result = self.estimate(k)
            if result.status == ERROR:
                raise FitError(f"{self.method} at batch {k * self.unit}: {result.error}")
            self.results[k] = result
            self.peaks[k] = judged_bytes(vars(result), self.fit_by)
        return self.peaks[k]

    def flops_of(self, k: int) -> int | None:
        """The FLOPs of k's step, as its estimate counted them (None where not estimated)."""
        return self.results[k].flops_per_step if k in self.results else None

    def fits(self, k: int) -> bool:
        # an estimate is oom when the allocator model ran out under the budget (device_total)
        return self.peak(k) <= self.budget_bytes and self.results[k].status != OOM

    def deciding_term(self, k: int | None) -> str:
        """The term that decides k does not fit ('' for None or a row without terms)."""
        if k is None or k not in self.results:
            return ""
        return deciding_term(vars(self.results[k]), self.budget_bytes, self.fit_by)

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
    **settings,
) -> type[Runner]:
    """Validate ``fit_batch``'s input without estimating anything; ConfigError names the
    problem. ``settings``: the cell's other settings (``seq`` for a token model, tooling)."""
    try:
        runner_cls = get_runner(method)
    except UnknownMethodError as err:
        raise ConfigError(str(err)) from None
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"unknown device kind {device_kind!r}; valid: {', '.join(DEVICE_KINDS)}")
    for value, option in (
        (res if res is not None else 1, "--res"),
        (classes, "--classes"),
        (max_batch, "--max-batch"),
        (budget_bytes, "--device-mem"),
    ):
        if value <= 0:
            raise ConfigError(f"{option} must be positive, got {value}")
    if micro_batch is not None and micro_batch <= 0:
        raise ConfigError(f"--micro-batch must be at least 1, got {micro_batch}")
    try:
        seq = settings.get("seq")
        validate_arch(
            arch,
            None if seq is not None else res,
            seq=seq,
            objective=settings.get("objective"),
            attn_implementation=settings.get("attn_implementation"),
        )
        check_parameter_size(arch)
        probe_batch = micro_batch or 2
        runner_cls.check_cell(
            arch, res, probe_batch, micro_batch if runner_cls.contract.micro_batch else None
        )
        runner_cls.check_tooling(
            Cell(
                method, arch, res if seq is None else None, probe_batch, classes=classes, **settings
            )
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
