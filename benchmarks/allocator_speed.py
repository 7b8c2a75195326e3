"""How fast the caching-allocator model replays an allocation stream (docs/allocator.md).

    python benchmarks/allocator_speed.py [--events 100000] [--repeats 5] [--live 400]

The stream is made up once (not timed): a training-like mix of sizes from 512 B to 200 MiB on
two streams, a bounded number of live allocations, frees in random order, and an
``empty_cache`` every 20,000 events. Each allocator configuration replays it ``--repeats``
times, the configurations taking turns so the machine's drift hits them alike; prints the
median and best events per second.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from membench.planning.allocator.conf import parse_alloc_conf
from membench.planning.allocator.replay import Alloc, EmptyCache, Free, replay

CONFIGS = ["", "expandable_segments:True", "max_split_size_mb:128,roundup_power2_divisions:4"]
MIB = 1024 * 1024


def make_events(count: int, live_limit: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    sizes = [512, 4096, 65536, 200_000, MIB, 3 * MIB, 8 * MIB, 16 * MIB, 50 * MIB, 200 * MIB]
    weights = [30, 25, 15, 10, 6, 5, 4, 3, 1.5, 0.5]
    live, events = [], []
    for i in range(count):
        if i and i % 20_000 == 0:
            events.append(EmptyCache())
        elif live and (len(live) >= live_limit or rng.random() < 0.5):
            events.append(Free(live.pop(rng.randrange(len(live)))))
        else:
            size = rng.choices(sizes, weights)[0] + rng.randrange(4096)
            events.append(Alloc(i, size, rng.choice((0, 0, 0, 7))))
            live.append(i)
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--live", type=int, default=400, help="most allocations alive at once")
    args = parser.parse_args()
    events = make_events(args.events, args.live)
    configs = {text: parse_alloc_conf(text) for text in CONFIGS}
    seconds, results = {text: [] for text in CONFIGS}, {}
    for turn in range(args.repeats):
        for text in CONFIGS[turn % len(CONFIGS) :] + CONFIGS[: turn % len(CONFIGS)]:
            start = time.perf_counter()
            results[text] = replay(events, configs[text])
            seconds[text].append(time.perf_counter() - start)
    for text in CONFIGS:
        median, best = statistics.median(seconds[text]), min(seconds[text])
        print(
            f"{text or '(defaults)':55s} {len(events) / median:>10,.0f} events/s median, "
            f"{len(events) / best:>10,.0f} best ({median:.3f} s median for {len(events):,}); "
            f"peak reserved {results[text].peak_reserved / MIB:,.0f} MiB"
        )


if __name__ == "__main__":
    main()
