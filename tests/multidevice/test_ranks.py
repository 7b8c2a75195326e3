"""A cell on several devices as one row (membench.multidevice.rows): combining the ranks, naming
the rank
that failed, ranks.csv beside cells.csv; and what a rank's c10d ops send."""

from __future__ import annotations

from membench.multidevice.rank_device import wire_bytes
from membench.multidevice.rows import RankEnd, append_ranks, combine_ranks, rank_failure, read_ranks
from membench.results import append_result
from membench.resume import prune_results
from membench.schema import Cell, CellResult, MemoryBreakdown

CELL = Cell(
    method="bp-pp", arch="vgg-d4-w8", res=8, batch=8, micro_batch=2, devices=2, schedule="1f1b"
)


def rank(peak, steps, status="estimated", error="", **values) -> CellResult:
    return CellResult(
        CELL,
        "cpu",
        "cpu",
        status=status,
        error=error,
        peak_allocated_bytes=peak,
        step_ms=steps,
        breakdown=MemoryBreakdown(peak, 0, 0, 0),
        **values,
    )


def test_the_row_is_the_largest_rank_the_slowest_steps_and_the_cells_totals():
    ranks = [
        rank(10, [1.0, 5.0], flops_per_step=3, sent_bytes_per_step=7, idle_fraction=0.2),
        rank(30, [2.0, 4.0], flops_per_step=4, sent_bytes_per_step=9, idle_fraction=0.4),
    ]
    row = combine_ranks(ranks)
    assert (row.peak_allocated_bytes, row.peak_rank, row.breakdown.parameters) == (30, 1, 30)
    assert row.step_ms == [2.0, 5.0] and row.imgs_per_s == 8 * 2 / 0.007
    assert (row.flops_per_step, row.sent_bytes_per_step) == (7, 9)
    assert abs(row.idle_fraction - 0.3) < 1e-12


def test_the_failed_rank_is_named_not_the_one_its_failure_broke():
    peer = rank(
        None,
        [],
        "error",
        "RuntimeError: [gloo/transport/tcp/pair.cc:561] Connection closed by peer",
    )
    own = rank(None, [], "oom", "OutOfMemoryError: no room")
    assert rank_failure(
        [RankEnd(0, peer, "exit code 1", at=2.0), RankEnd(1, own, "exit code 1", at=1.0)]
    ) == ("oom", "rank 1: OutOfMemoryError: no room")
    assert rank_failure(
        [RankEnd(0, peer, "exit code 1", at=2.0), RankEnd(1, None, "killed by signal SIGKILL")]
    )[1] == ("rank 1 failed (killed by signal SIGKILL) before sending its result")
    waited = rank(None, [], "error", "RuntimeError: Timed out waiting 2000ms for recv")
    status, text = rank_failure(
        [
            RankEnd(0, waited, "exit code 1", at=1.0),
            RankEnd(1, None, "no result within 6 s", hung=True),
        ]
    )
    assert status == "timeout" and text.startswith("rank(s) 1 hung")
    assert "rank(s) 0 timed out waiting for them" in text


def test_ranks_csv_keeps_the_ranks_of_the_rows_still_in_cells_csv(tmp_path):
    for started in ("2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"):
        row = combine_ranks([rank(10, [1.0]), rank(20, [2.0])])
        row.started_at = started
        append_ranks(tmp_path, row)
        append_result(tmp_path, row)
    assert len(read_ranks(tmp_path)) == 4
    prune_results(tmp_path, lambda r: r["started_at"].startswith("2026-01-01"))  # a rerun's
    ranks = read_ranks(tmp_path)
    assert list(ranks["rank"]) == [0, 1] and list(ranks["peak_allocated_bytes"]) == [10, 20]
    assert set(ranks["started_at"]) == {"2026-01-02T00:00:00+00:00"}
    assert list(ranks["step_ms"]) == ["1.0000", "2.0000"]


def test_a_collectives_bytes_are_what_a_ring_puts_on_the_wire():
    import torch

    tensor = torch.empty(100, dtype=torch.float32)  # 400 bytes
    assert wire_bytes("allreduce_", ([tensor],), 4, 0) == 2 * 3 * 400 // 4
    assert wire_bytes("_allgather_base_", (None, tensor), 4, 0) == 3 * 400
    assert wire_bytes("_reduce_scatter_base_", (None, tensor), 4, 0) == 3 * 400 // 4
    assert wire_bytes("send", ([tensor],), 4, 0) == 400
    assert wire_bytes("recv_", ([tensor],), 4, 0) == 0
    assert wire_bytes("broadcast_", ([tensor], None, 0), 4, 0) == 400
    assert wire_bytes("broadcast_", ([tensor], None, 0), 4, 1) == 0
