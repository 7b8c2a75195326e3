"""The schedule model (membench.multidevice.schedule_model): the pipeline split, each schedule's
step
and bubble, and `membench schedule`, which states it is a model."""

from __future__ import annotations

import itertools
import random

import pytest
from helpers import usage_error
from typer.testing import CliRunner

from membench.cli import app
from membench.multidevice.schedule_model import forward_only, gpipe, one_f_one_b
from membench.multidevice.split import balanced_stages, conv_costs

cli = CliRunner()


def brute_force(costs, stages):
    """The best (largest stage, sum of squares) over every contiguous split: what
    balanced_stages must find."""
    best = None
    for cuts in itertools.combinations(range(1, len(costs)), stages - 1):
        bounds = [0, *cuts, len(costs)]
        sums = [sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])]
        key = (max(sums), sum(x * x for x in sums))
        best = key if best is None else min(best, key)
    return best


def test_the_split_is_contiguous_and_its_largest_stage_the_smallest_possible():
    rng = random.Random(0)
    for _ in range(30):
        costs = [rng.randint(1, 50) for _ in range(rng.randint(2, 9))]
        stages = rng.randint(1, len(costs))
        split = balanced_stages(costs, stages)
        assert [i for stage in split for i in stage] == list(range(len(costs)))
        assert all(len(stage) for stage in split)
        sums = [sum(costs[i] for i in stage) for stage in split]
        assert (max(sums), sum(x * x for x in sums)) == brute_force(costs, stages)
    with pytest.raises(ValueError):
        balanced_stages([1, 2], 3)


def test_conv_costs_count_each_layers_multiply_accumulates():
    assert conv_costs([8, 16], [4, 2]) == [3 * 8 * 9 * 16, 8 * 16 * 9 * 4]


def test_equal_stages_give_the_textbook_bubble():
    n, m, f, b = 4, 8, 1.0, 2.0
    for modelled in (gpipe([f] * n, [b] * n, m), one_f_one_b([f] * n, [b] * n, m)):
        assert modelled.step == pytest.approx((m + n - 1) * (f + b))
        assert modelled.bubble == pytest.approx((n - 1) / (m + n - 1))
    ff = forward_only([f + b / 2] * n, m, tail=0.0)
    assert ff.step == pytest.approx((m + n - 1) * (f + b / 2))
    assert ff.bubble == pytest.approx((n - 1) / (m + n - 1))


def test_the_slowest_stage_sets_the_steady_state():
    # GPipe's forward and backward flows each wait for their own slowest stage; 1F1B for the
    # slowest forward plus backward, which is no smaller.
    forward, backward, m = [1.0, 3.0], [4.0, 1.0], 5
    assert gpipe(forward, backward, m).step == pytest.approx(4 + 4 * 3 + 5 + 4 * 4)
    assert one_f_one_b(forward, backward, m).step == pytest.approx(9 + 4 * 5)
    assert forward_only([2.0, 1.0], m, tail=0.5).busy == (10.0, 5.5)


def test_membench_schedule_prints_a_model_for_each_device_count():
    result = cli.invoke(
        app,
        [
            "schedule",
            "--arch",
            "vgg-d4-w8",
            "--res",
            "8",
            "--batch",
            "8",
            "--micro-batch",
            "2",
            "--classes",
            "4",
            "--devices",
            "2,4",
            "--gpu",
            "H200",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "(a model)" in result.output and "assumptions:" in result.output
    for n in (2, 4):
        assert f"N={n} ff-pp / bp-pp:" in result.output
        assert f"N={n} 1f1b" in result.output and " ms " in result.output
    assert "--devices takes 2 to 4" in usage_error(
        cli.invoke(
            app,
            [
                "schedule",
                "--arch",
                "vgg-d4-w8",
                "--res",
                "8",
                "--batch",
                "8",
                "--micro-batch",
                "2",
                "--devices",
                "5",
            ],
        )
    )
