import pytest
import torch
from conftest import TINY_ARCH, TINY_RES

from membench.measure.devices import CpuDevice
from membench.measure.protocol import build_runner, forget_flop_counts, make_batch, run_cell
from membench.schema import Cell


class CountingDevice(CpuDevice):
    """A CPU device that records which step calls were the timed ones."""

    def __init__(self):
        super().__init__()
        self.timed_calls: list[int] = []

    def time_steps(self, step, count):
        def counted():
            step()
            self.timed_calls.append(STEP_CALLS[0])

        return super().time_steps(counted, count)


STEP_CALLS = [0]


def _count_steps(monkeypatch):
    STEP_CALLS[0] = 0
    from membench.runners.bp import BPRunner

    original = BPRunner.step

    def step(self, images, labels):
        STEP_CALLS[0] += 1
        return original(self, images, labels)

    monkeypatch.setattr(BPRunner, "step", step)


def test_warmup_and_tracker_steps_are_not_timed(monkeypatch):
    _count_steps(monkeypatch)
    device = CountingDevice()
    cell = Cell("bp", TINY_ARCH, TINY_RES, batch=2, warmup=3, steps=4)
    result = run_cell(cell, device, tracker_steps=2)
    assert result.status == "ok", result.error
    assert len(result.step_ms) == 4
    # 3 warmup steps and one tracker step (bp carries nothing from step to step, and its FLOPs
    # are counted on that step) come first; the timed steps are exactly the last four.
    assert device.timed_calls == [5, 6, 7, 8]
    assert STEP_CALLS[0] == 8
    assert result.flops_per_step > 0


class UntrackedDevice(CountingDevice):
    """A device with no tracker pass (as CUDA): its FLOPs need a fake step of their own."""

    def memory_tracker(self, cell):
        return None


def test_without_a_tracker_pass_the_flops_take_one_fake_step_per_key(monkeypatch):
    _count_steps(monkeypatch)
    forget_flop_counts()
    device = UntrackedDevice()
    cell = Cell("bp", TINY_ARCH, TINY_RES, batch=2, warmup=3, steps=4)
    result = run_cell(cell, device)
    # 3 warmup steps, the 4 timed ones, then the fake step that counts the FLOPs
    assert device.timed_calls == [4, 5, 6, 7] and STEP_CALLS[0] == 8
    # The same cell in bf16: its FLOPs are known (flops_key), so no fake step runs for them.
    STEP_CALLS[0], device.timed_calls = 0, []
    again = run_cell(Cell(**{**cell.settings(), "precision": "bf16"}), device)
    assert again.flops_per_step == result.flops_per_step > 0
    assert device.timed_calls == [4, 5, 6, 7] and STEP_CALLS[0] == 7


def test_tracker_peak_covers_the_persistent_state_and_grows_with_batch():
    device = CpuDevice()
    peaks = []
    for batch in (2, 8):
        result = run_cell(Cell("bp", TINY_ARCH, 16, batch=batch, warmup=1, steps=1), device)
        assert result.status == "ok", result.error
        assert result.memory_source == "tracker"
        b = result.breakdown
        param_bytes = sum(
            p.numel() * p.element_size() for p in build_runner(result.cell, "cpu").parameters()
        )
        assert b.parameters >= param_bytes
        assert result.peak_allocated_bytes >= b.parameters + b.gradients + b.optimizer_state
        assert b.optimizer_state >= 2 * param_bytes  # AdamW's two moments
        assert result.peak_allocated_bytes == b.total
        peaks.append(result.peak_allocated_bytes)
    assert peaks[1] > peaks[0]


def test_summary_statistics_and_throughput():
    result = run_cell(Cell("bp", TINY_ARCH, TINY_RES, batch=4, warmup=1, steps=5), CpuDevice())
    stats = result.summary_stats()
    assert stats["p10"] <= stats["median"] <= stats["p90"]
    assert abs(result.imgs_per_s - 4 * 5 / (sum(result.step_ms) / 1e3)) < 1e-6


def test_budget_turns_into_an_oom_status():
    cell = Cell("bp", TINY_ARCH, TINY_RES, batch=2, warmup=1, steps=1, device_mem_bytes=1024)
    result = run_cell(cell, CpuDevice())
    assert result.status == "oom"
    assert "budget" in result.error


def test_synthetic_batch_is_deterministic_per_seed():
    cell = Cell("bp", TINY_ARCH, TINY_RES, batch=3, classes=5)
    (x1, y1), (x2, y2) = (
        make_batch(cell, torch.device("cpu")),
        make_batch(cell, torch.device("cpu")),
    )
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 3, TINY_RES, TINY_RES) and int(y1.max()) < 5


def test_allocator_failures_reported_as_runtime_errors_count_as_oom():
    from membench.measure.protocol import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.gpu
def test_cuda_cell_reads_the_allocator_peaks():
    from membench.measure.devices import resolve_device

    result = run_cell(Cell("bp", TINY_ARCH, 16, batch=4, warmup=2, steps=5), resolve_device("cuda"))
    assert result.status == "ok", result.error
    assert result.memory_source == "cuda_allocator"
    assert result.peak_reserved_bytes >= result.peak_allocated_bytes > 0
    assert len(result.step_ms) == 5 and all(ms > 0 for ms in result.step_ms)


def test_a_long_error_keeps_its_head_and_tail():
    from membench.errors import one_line

    message = (
        "CUDA out of memory. "
        + "Process 123 has 1 GiB in use. " * 60
        + "Of the allocated memory 7.5 GiB is allocated by PyTorch"
    )
    line = one_line(torch.OutOfMemoryError(message))
    assert len(line) <= 800 and "\n" not in line
    assert line.startswith("OutOfMemoryError: CUDA out of memory.")
    assert line.endswith("allocated by PyTorch")


# One cell per built-in method, with the tooling that leaves the most between steps where the
# method takes it (bf16, gradients released, optimizer state on the host), or micro-batches.
STEP_CELLS = [
    dict(method="bp", precision="bf16", grads="released", optimizer_state="host"),
    dict(method="bp-accum", micro_batch=2, optimizer_state="host"),
    dict(method="bp-ckpt", precision="bf16"),
    dict(method="bp-sac", micro_batch=2),
    dict(method="bp-offload", precision="bf16", optimizer_state="host"),
    dict(method="bp-deepsup"),
    dict(method="ff-naive", precision="bf16"),
    dict(method="ff-pipelined", micro_batch=2, grads="released", optimizer_state="host"),
    dict(method="bp-ddp", devices=2),
    dict(method="bp-fsdp", devices=2),
    dict(method="bp-pp", devices=2, micro_batch=2),
    dict(method="ff-pp", devices=2, micro_batch=2),
    dict(method="bp", precision="fp16"),
]


def _estimated(cell):
    from membench.multidevice.fake_group import estimate_ranks
    from membench.planning.estimate import estimate_cell

    result = estimate_ranks(cell) if cell.devices > 1 else estimate_cell(cell)
    assert result.status == "estimated", result.error
    ranks = result.ranks or [result]
    return [
        (r.peak_allocated_bytes, r.breakdown.as_columns(), r.flops_per_step, r.sent_bytes_per_step)
        for r in ranks
    ]


@pytest.mark.parametrize("options", STEP_CELLS, ids=lambda o: "-".join(map(str, o.values())))
def test_one_tracked_step_has_the_peak_of_two_unless_the_runner_carries_tensors(
    options, monkeypatch
):
    from membench.measure import protocol

    cell = Cell(arch=TINY_ARCH, res=TINY_RES, batch=4, warmup=1, steps=2, **options)
    contained = cell.method in protocol.STEP_CONTAINED_METHODS and cell.precision != "fp16"
    assert contained == (cell.method not in ("ff-naive", "ff-pp") and cell.precision != "fp16")
    declared = _estimated(cell)
    monkeypatch.setattr(protocol, "carries_tensors_across_steps", lambda runner: True)
    assert _estimated(cell) == declared  # two tracked steps: the same peak, to the byte


def test_a_runner_that_carries_tensors_needs_its_second_tracked_step(monkeypatch):
    """The check above can fail: ff-naive's first tracked step does not see the losses it
    keeps from the step before, and a second step does."""
    from membench.measure import protocol

    cell = Cell("ff-naive", TINY_ARCH, TINY_RES, 4, warmup=1, steps=2)
    two = _estimated(cell)
    monkeypatch.setattr(protocol, "carries_tensors_across_steps", lambda runner: False)
    assert _estimated(cell)[0][0] < two[0][0]
