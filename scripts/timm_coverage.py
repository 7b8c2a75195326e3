"""Which timm classifiers membench estimates: one model per timm family, its CUDA estimate at
the model's default resolution; the table of docs/timm-coverage.md.

    python scripts/timm_coverage.py [--out timm-coverage.csv] [--methods bp,bp-ckpt]
                                    [--timeout 900] [FAMILY ...]
    python scripts/timm_coverage.py --markdown [--out timm-coverage.csv]

A family is a module of ``timm.models`` (``timm.list_modules()``: ``swin_transformer``,
``efficientnet``, ...). Its representative is the model with the fewest parameters among those
named after the family (``swin_*`` for ``swin_transformer``; every model of the family where
none is), leaving out timm's ``test_*`` models: parameters counted by building each candidate
as membench builds a model for an estimate (the constructor on real tensors, the parameters on
the meta device). The model runs at its default resolution (its ``pretrained_cfg``'s
``input_size``), batch 2, fp32, K = 1000: ``validate_arch`` (a refusal is a row, with its
reason), then a CUDA estimate per method (``estimate_cell``; bp's with its FLOP count). Each
family runs in a child process bounded by ``--timeout`` (selection included), so a model that
hangs or crashes costs its own row only. Every row is appended to ``--out`` as it comes; a run
started again skips the rows the CSV has and estimates the rest with the models it names
(delete a method's rows to estimate it again). ``--markdown`` writes the table from the CSV.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path

from coverage_common import (
    ERROR,
    TIMEOUT,
    Coverage,
    append_row,
    estimate_model,
    peak_text,
    read_rows,
    run_bounded,
    short_reason,
)

from membench.report.markdown import markdown_table

DEFAULT_RES = 224  # a model without a pretrained config: timm's usual ImageNet size
BATCH = 2


def families() -> list[str]:
    """timm's model families: its modules with at least one model."""
    import timm

    return [module for module in timm.list_modules() if timm.list_models(module=module)]


def candidates(family: str) -> list[str]:
    """The family's models named after it (all of them where none is), without ``test_*``."""
    import timm

    names = [n for n in timm.list_models(module=family) if not n.startswith("test_")]
    named = [n for n in names if n.startswith(family.split("_")[0])]
    return named or names


def default_resolution(model: str) -> int:
    """The model's ``pretrained_cfg`` input size (its height), or DEFAULT_RES without one."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else DEFAULT_RES


def count_parameters(model: str) -> int:
    """Parameters of the model as timm builds it (K = 1000), built with meta parameters."""
    import timm

    from membench.archs import parameters_on_meta

    with parameters_on_meta():
        built = timm.create_model(model, pretrained=False)
    return sum(p.numel() for p in built.parameters())


def select(family: str) -> tuple[str, int | None]:
    """The family's smallest model that builds, and its parameters (the first candidate and
    None where none builds: its estimate says why)."""
    sizes = {}
    for model in candidates(family):
        try:
            sizes[model] = count_parameters(model)
        except Exception:  # a model that does not build is not the representative
            continue
    if not sizes:
        return candidates(family)[0], None
    model = min(sizes, key=lambda name: (sizes[name], default_resolution(name), name))
    return model, sizes[model]


def cover_family(
    family: str,
    methods: list[str],
    chosen: tuple[str, int | None] | None,
    send: Callable[[object], None],
) -> None:
    """In the child: select the family's model (unless an earlier run ``chosen`` it: model and
    parameters), then send the selection and one row per method."""
    model, parameters = chosen or select(family)
    res = default_resolution(model)
    send(("selected", model, res, parameters))
    for method in methods:
        row = estimate_model(
            f"timm:{model}", res, method, family=family, batch=BATCH, count_flops=method == "bp"
        )
        row.parameters = parameters
        send(row)


def _print(row: Coverage) -> None:
    seconds = f" ({row.seconds:.0f} s)" if row.seconds else ""
    print(f"{row.family:28s} {row.arch:40s} {row.method:8s} {peak_text(row)}{seconds}", flush=True)


def cover(
    family: str,
    methods: list[str],
    out: Path,
    timeout_s: float,
    chosen: tuple[str, int | None] | None = None,
) -> None:
    """The family's rows into ``out``, each as it comes; for the methods its child never got
    to (it ran out of time, it died), a row saying why. ``chosen``: the family's model and its
    parameters, as an earlier run selected them."""
    selected: dict = {"arch": "-", "res": 0, "parameters": None}
    done: list[str] = []

    def receive(message: object) -> None:
        if isinstance(message, Coverage):
            append_row(out, message)
            done.append(message.method)
            _print(message)
        else:
            _, model, selected["res"], selected["parameters"] = message
            selected["arch"] = f"timm:{model}"

    reason = run_bounded(cover_family, (family, methods, chosen), timeout_s, receive)
    for method in methods:
        if method not in done:
            status = TIMEOUT if reason.startswith("no result") else ERROR
            where = "selecting the model" if selected["arch"] == "-" else "estimating"
            row = Coverage(
                family,
                selected["arch"],
                selected["res"],
                method,
                BATCH,
                status,
                parameters=selected["parameters"],
                reason=f"{reason or 'no row'} (while {where})",
            )
            append_row(out, row)
            _print(row)


def run(names: list[str], methods: list[str], out: Path, timeout_s: float) -> None:
    """Cover every family of ``names`` whose rows ``out`` does not hold yet (with the model an
    earlier run selected, where it did)."""
    rows = read_rows(out)
    done = {(row.family, row.method) for row in rows}
    chosen = {
        row.family: (row.arch.removeprefix("timm:"), row.parameters)
        for row in rows
        if row.arch.startswith("timm:")
    }
    for family in names:
        todo = [m for m in methods if (family, m) not in done]
        if todo:
            cover(family, todo, out, timeout_s, chosen.get(family))


def _gflop(row: Coverage | None) -> str:
    return f"{row.flops_per_image / 1e9:.2f}" if row and row.flops_per_image else "-"


def counts(rows: list[Coverage], method: str) -> str:
    """'bp: 97 of 98 estimate (1 refused)': how ``method``'s rows ended."""
    mine = [row for row in rows if row.method == method]
    others: dict[str, int] = {}
    for row in mine:
        if not row.estimates:
            others[row.status] = others.get(row.status, 0) + 1
    rest = ", ".join(f"{count} {status}" for status, count in sorted(others.items()))
    return f"{method}: **{sum(row.estimates for row in mine)} of {len(mine)} estimate**" + (
        f" ({rest})" if rest else ""
    )


def table_row(family: str, by_method: dict[str, Coverage], methods: list[str]) -> list[str]:
    """One family's row: its model, each method's peak, bp's FLOPs and time, the reasons."""
    main = by_method[methods[0]]
    status = (
        "estimated"
        if all(by_method[m].estimates for m in by_method)
        else "; ".join(f"{m}: {row.status}" for m, row in by_method.items() if not row.estimates)
    )
    reasons = "; ".join(
        f"{m}: {short_reason(row.reason)}" for m, row in by_method.items() if not row.estimates
    )
    peaks = [
        peak_text(by_method[m]) if m in by_method and by_method[m].estimates else "-"
        for m in methods
    ]
    return [
        family,
        main.arch.removeprefix("timm:"),
        str(main.res) if main.res else "-",
        f"{main.parameters / 1e6:.1f}M" if main.parameters else "-",
        status,
        *peaks,
        _gflop(main),
        f"{main.seconds:.0f}" if main.seconds else "-",
        reasons,
    ]


def markdown(out: Path) -> str:
    """The docs' section: counts, how and when it was made, and one row per family."""
    import timm
    import torch

    rows = read_rows(out)
    by_family: dict[str, dict[str, Coverage]] = {}
    for row in rows:
        by_family.setdefault(row.family, {})[row.method] = row
    methods = list(dict.fromkeys(row.method for row in rows))
    header = [
        "family",
        "model",
        "res",
        "params",
        "status",
        *[f"{m} peak (batch {BATCH})" for m in methods],
        f"{methods[0]} GFLOP/img",
        f"{methods[0]} s/estimate",
        "reason",
    ]
    made = dt.date.fromtimestamp(out.stat().st_mtime).isoformat()
    return "\n".join(
        [
            f"{len(by_family)} families; " + "; ".join(counts(rows, m) for m in methods) + ".",
            "",
            f"Made on {made} with torch {torch.__version__} and timm {timm.__version__} by",
            "",
            f"    python scripts/timm_coverage.py --methods {','.join(methods)}",
            "",
            markdown_table(
                header,
                [table_row(family, by_method, methods) for family, by_method in by_family.items()],
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", help="timm modules (default: every one)")
    parser.add_argument("--out", type=Path, default=Path("timm-coverage.csv"))
    parser.add_argument("--methods", default="bp,bp-ckpt")
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds one family may take (selection and every estimate)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.out))
        return
    run(args.families or families(), args.methods.split(","), args.out, args.timeout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
