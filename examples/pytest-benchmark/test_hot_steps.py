"""The training steps this project cares about, timed by pytest-benchmark and measured by membench.

Run (see README.md):

    pytest --benchmark-enable --benchmark-autosave --benchmark-json=bench.json   # record
    pytest --benchmark-enable --benchmark-compare --benchmark-compare-fail=median:10% \
           --membench-memory-baseline=bench.json                                # gate

The cells are tiny so the example runs in seconds on a CPU; a real suite names the cells it
ships (e.g. arch="vgg8", res=32, batch=64).
"""

import pytest


@pytest.mark.parametrize("method", ["bp", "ff-pipelined"])
def test_training_step(membench_benchmark, method):
    result = membench_benchmark(method, arch="vgg-d2-w8", res=8, batch=2, warmup=1, steps=3)
    assert result.peak_allocated_bytes > 0


def test_gradient_accumulation_step(membench_benchmark):
    result = membench_benchmark(
        "bp-accum", arch="vgg-d2-w8", res=8, batch=2, micro_batch=1, warmup=1, steps=3
    )
    assert result.imgs_per_s > 0
