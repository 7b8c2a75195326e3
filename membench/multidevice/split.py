"""The pipeline split: which contiguous layers each stage of a pipeline owns.

The pipeline runners (``bp-pp``, ``ff-pp``) and the schedule model use the same split, so a
modelled pipeline and a measured one compare like for like (docs/multi-device.md, "The
split"). No torch: the runners and the planner both import it.
"""

from __future__ import annotations

from collections.abc import Sequence


def conv_costs(channels: Sequence[int], sizes: Sequence[int], in_channels: int = 3) -> list[int]:
    """Multiply-accumulates of each 3x3 conv layer per sample: C_in·C_out·9·H·W (what the
    pipeline split balances; FLOPs of forward and of each gradient are proportional to it)."""
    costs, c_in = [], in_channels
    for c_out, size in zip(channels, sizes):
        costs.append(c_in * c_out * 9 * size * size)
        c_in = c_out
    return costs


def _split(prefix: list[float], stages: int, score, allowed) -> list[range]:
    """The contiguous split of len(prefix) - 1 layers into ``stages`` runs minimising ``score``
    (an associative fold over the runs' costs), each run's cost ``allowed``."""
    depth = len(prefix) - 1
    best = [[None] * (depth + 1) for _ in range(stages + 1)]  # (score, start of the last run)
    best[0][0] = (0.0, 0)
    for k in range(1, stages + 1):
        for i in range(k, depth + 1):
            for j in range(k - 1, i):
                cost = prefix[i] - prefix[j]
                if best[k - 1][j] is None or not allowed(cost):
                    continue
                value = score(best[k - 1][j][0], cost)
                if best[k][i] is None or value < best[k][i][0]:
                    best[k][i] = (value, j)
    bounds, end = [], depth
    for k in range(stages, 0, -1):
        start = best[k][end][1]
        bounds.append(range(start, end))
        end = start
    return bounds[::-1]


def balanced_stages(costs: Sequence[float], stages: int) -> list[range]:
    """Split layers 0..L-1 into ``stages`` contiguous, non-empty runs: the largest run's summed
    cost as small as it can be (the pipeline's pace), then the runs as even as that allows (the
    least sum of squares: the other stages' memory and work spread out). ValueError unless
    1 <= stages <= L."""
    if not 1 <= stages <= len(costs):
        raise ValueError(f"cannot split {len(costs)} layer(s) into {stages} stage(s)")
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    pace = max(sum(costs[i] for i in run) for run in _split(prefix, stages, max, lambda cost: True))
    return _split(
        prefix,
        stages,
        lambda total, cost: total + cost * cost,
        lambda cost: cost <= pace * (1 + 1e-12),
    )
