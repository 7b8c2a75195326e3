"""How long a command takes to end after Ctrl-C, at several moments of its run.

Usage: python benchmarks/ctrl_c_latency.py [--trials 6] [--first 10] [--every 1.5] -- COMMAND...

Default command: the paper's cell (``membench plan --arch vgg11 --res 224 --batch 128 --classes
100 --gpu laptop-8gb``). Each trial starts the command in its own process group, sends SIGINT
to the group (as a terminal's Ctrl-C does) ``first + every * trial`` seconds after the start,
and prints when the one line "membench: interrupted" came, when the process was gone, its exit
code and whether stderr held anything else (a lost interrupt shows as a trial that ran on, or an
"Exception ignored" line).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

PAPER_CELL = [
    "plan",
    "--arch",
    "vgg11",
    "--res",
    "224",
    "--batch",
    "128",
    "--classes",
    "100",
    "--gpu",
    "laptop-8gb",
]


def trial(command: list[str], after_s: float, limit_s: float) -> dict:
    """One run, interrupted ``after_s`` seconds after its start."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", "from membench.cli import main; main()", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    time.sleep(after_s)
    finished_before = process.poll() is not None
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    os.set_blocking(process.stderr.fileno(), False)
    err, line_s = b"", None
    while True:
        err += process.stderr.read() or b""
        if line_s is None and b"interrupted" in err:
            line_s = time.monotonic() - sent
        if process.poll() is not None:
            err += process.stderr.read() or b""
            break
        if time.monotonic() - sent > limit_s:
            os.killpg(process.pid, signal.SIGKILL)
        time.sleep(0.005)
    gone_s = time.monotonic() - sent
    if line_s is None and b"interrupted" in err:
        line_s = gone_s
    lines = err.decode(errors="replace").strip().splitlines()
    return dict(
        after=after_s,
        line=line_s,
        gone=gone_s,
        code=process.returncode,
        clean=len(lines) == 1 and lines[0].startswith("membench: interrupted"),
        finished_before=finished_before,
        stderr=lines,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--first", type=float, default=10.0, help="seconds before the first")
    parser.add_argument("--every", type=float, default=1.5, help="seconds later each trial")
    parser.add_argument("--limit", type=float, default=120.0, help="SIGKILL after this")
    parser.add_argument("command", nargs="*", default=PAPER_CELL)
    args = parser.parse_args()
    print(f"membench {' '.join(args.command)}")
    gone = []
    for index in range(args.trials):
        got = trial(args.command, args.first + args.every * index, args.limit)
        line = "-" if got["line"] is None else f"{got['line']:.2f} s"
        print(
            f"  Ctrl-C at {got['after']:5.1f} s: line after {line}, gone after "
            f"{got['gone']:.2f} s, exit {got['code']}, "
            + ("one line" if got["clean"] else f"stderr: {got['stderr'][-3:]}")
            + (" (had finished before the Ctrl-C)" if got["finished_before"] else "")
        )
        gone.append(got["gone"])
    print(
        f"gone after: median {statistics.median(gone):.2f} s, max {max(gone):.2f} s "
        f"over {len(gone)} trials; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs"
    )


if __name__ == "__main__":
    main()
