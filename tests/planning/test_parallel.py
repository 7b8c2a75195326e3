"""Estimates of independent cells run side by side in worker processes and give the rows they
give one by one in this process: plan's candidates, fit's searches, a sweep's estimates."""

from __future__ import annotations

import pytest
from conftest import TINY_ARCH, TINY_RES

from membench.execute.sweep import estimate_sweep
from membench.planning.fit import fit_methods
from membench.planning.parallel import estimate_cells
from membench.schema import Cell

# What depends on when and where a row was made, not on what was estimated.
CIRCUMSTANCES = ("started_at", "wall_s")


def rows(results) -> list[dict]:
    return [
        {k: v for k, v in r.row().items() if k not in CIRCUMSTANCES}
        | {"ranks": [rows([rank]) for rank in r.ranks]}
        for r in results
    ]


CELLS = [
    Cell("bp", TINY_ARCH, TINY_RES, 4, warmup=1, steps=1),
    Cell("bp-ckpt", TINY_ARCH, TINY_RES, 4, 2, precision="bf16", warmup=1, steps=1),
    Cell("ff-pipelined", TINY_ARCH, TINY_RES, 4, 2, grads="released", warmup=1, steps=1),
    Cell("bp-ddp", TINY_ARCH, TINY_RES, 4, devices=2, warmup=1, steps=1),
]


def test_estimates_side_by_side_are_the_estimates_one_by_one():
    seen = []
    side_by_side = estimate_cells(CELLS, "cuda", jobs=2, progress=lambda *a: seen.append(a[:2]))
    one_by_one = estimate_cells(CELLS, "cuda", jobs=1)
    assert all(r.status == "estimated" for r in one_by_one)
    assert rows(side_by_side) == rows(one_by_one)
    assert sorted(seen) == [(done, len(CELLS)) for done in range(1, len(CELLS) + 1)]


def test_a_sweeps_estimates_side_by_side_are_its_rows_one_by_one(tmp_path):
    parallel = estimate_sweep(CELLS, "cuda", tmp_path / "a", jobs=2)
    serial = estimate_sweep(CELLS, "cuda", tmp_path / "b", isolation="none")
    assert rows(parallel) == rows(serial)
    assert all(r.wall_s > 0 for r in parallel + serial)


@pytest.mark.slow
def test_fit_searches_side_by_side_find_what_they_find_one_by_one():
    methods = ["bp-accum", "ff-pipelined"]
    # 512 KiB holds no CUDA context: judged by the tensors' peak
    options = dict(classes=10, device_kind="cuda", max_batch=16, fit_by="allocated")
    together = fit_methods(methods, TINY_ARCH, TINY_RES, 2**19, jobs=2, **options)
    alone = fit_methods(methods, TINY_ARCH, TINY_RES, 2**19, jobs=1, **options)
    assert [vars(f) for f in together] == [vars(f) for f in alone]
    assert all(f.batch and f.estimates for f in alone)
