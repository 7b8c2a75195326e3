"""What else ran on the machine while a cell's steps were timed: the load average, and the
shares of the machine's CPU time the cell's process and every other process used.

Read from Linux's ``/proc/stat`` (every CPU's busy time since boot) and ``getrusage`` (this
process's, all its threads), before and after the timed steps: the machine's busy time over
the window, less this process's, is what others used (steal time, another VM on the host,
counts as others). psutil reads the same files but is no dependency of membench, and these
are a few lines. Where there is no ``/proc/stat`` (macOS) the shares stay empty and the
verdict rests on the spread alone. The kernel counts in clock ticks (10 ms at 100 Hz): over a
timed pass shorter than a few ticks the shares are coarse.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest is in user).
IDLE_FIELDS = (3, 4)


def machine_cpu() -> tuple[float, int] | None:
    """(seconds every CPU of the machine has been busy since boot, the number of CPUs), or
    None where /proc/stat cannot be read."""
    try:
        lines = PROC_STAT.read_text().splitlines()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    total = [int(v) for v in lines[0].split()[1:9]]
    busy = sum(v for i, v in enumerate(total) if i not in IDLE_FIELDS)
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return busy / ticks, cpus


def own_cpu_s() -> float:
    """CPU seconds this process has used, every thread of it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class MachineLoad:
    """What ran on the machine over a window: the 1-minute load average at its end, and the
    shares of the machine's CPU time (all cores = 1) this process and all others used (None
    where unknown)."""

    load_average: float | None
    cpu_self: float | None
    cpu_others: float | None

    def record(self, result) -> None:
        """Into a CellResult's columns of the same names."""
        result.load_average, result.cpu_self = self.load_average, self.cpu_self
        result.cpu_others = self.cpu_others


@dataclass(frozen=True)
class LoadWindow:
    """A window over some work: ``start()`` before it, ``stop()`` after."""

    wall: float
    own: float
    machine: tuple[float, int] | None

    @classmethod
    def start(cls) -> LoadWindow:
        return cls(time.monotonic(), own_cpu_s(), machine_cpu())

    def stop(self) -> MachineLoad:
        wall = time.monotonic() - self.wall
        own = own_cpu_s() - self.own
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = None
        now = machine_cpu()
        if self.machine is None or now is None or wall <= 0:
            return MachineLoad(load, None, None)
        capacity = wall * now[1]
        busy = now[0] - self.machine[0]
        return MachineLoad(
            load, min(1.0, own / capacity), min(1.0, max(0.0, busy - own) / capacity)
        )


__all__ = ["LoadWindow", "MachineLoad", "machine_cpu", "own_cpu_s"]
