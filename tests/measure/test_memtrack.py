import pytest
import torch

from membench.measure.memtrack import MemoryBudgetExceeded, TensorMemoryTracker, cuda_allocated_size
from membench.measure.protocol import is_out_of_memory


def test_counts_allocations_and_frees_and_keeps_the_peak():
    tracker = TensorMemoryTracker()
    with tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = torch.ones(500)  # 2000 bytes
        del a
        c = b.view(10, 50)  # a view allocates nothing
    assert tracker.peak_bytes == 6000
    assert tracker.current_bytes == 2000
    del b, c


def test_budget_refusal_is_an_out_of_memory_error():
    tracker = TensorMemoryTracker(budget_bytes=10_000)
    with pytest.raises(MemoryBudgetExceeded) as refused, tracker:
        keep = [torch.ones(1000) for _ in range(5)]  # 20 kB > 10 kB
        del keep
    # the protocol classifies it as an OOM (not an error) exactly as it would a CUDA OOM
    assert is_out_of_memory(refused.value)
    assert "device budget" in str(refused.value)


def test_breakdown_classifies_parameters_gradients_optimizer_state():
    model = torch.nn.Linear(100, 10)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(4, 100)
    model(x).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tracker = TensorMemoryTracker()
    tracker.add_existing("parameters", model.parameters())
    tracker.add_existing(
        "optimizer_state", [t for s in optimizer.state.values() for t in s.values()]
    )
    with tracker, tracker.watch_gradients(model.parameters()):
        model(x).sum().backward()
    breakdown = tracker.peak_breakdown()
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert breakdown.parameters == param_bytes
    assert breakdown.gradients == param_bytes
    assert breakdown.optimizer_state >= 2 * param_bytes  # exp_avg and exp_avg_sq
    assert breakdown.total == tracker.peak_bytes


def test_cuda_rounding():
    assert cuda_allocated_size(0) == 0
    assert cuda_allocated_size(1) == 512
    assert cuda_allocated_size(512) == 512
    assert cuda_allocated_size(513) == 1024
