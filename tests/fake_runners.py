"""Register throwaway runners for a test, visible to this process and to worker processes.

Runners come from the ``membench.methods`` entry-point group, so a test runner needs a module and
a distribution that declares it. ``install_fake_runners`` writes both into a temporary folder and
puts that folder on ``sys.path`` (this process) and ``PYTHONPATH`` (child processes); pytest's
monkeypatch undoes all of it after the test.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

import membench.runners

# Runners the sweep tests need; each reads its behaviour from environment variables so a
# worker process (which inherits the sweep's environment) behaves as the test asks.
MISBEHAVING_RUNNERS = '''
import multiprocessing
import os
import signal
import time
from pathlib import Path

from membench.runners.bp import BPRunner


class SlowRunner(BPRunner):
    """Hangs in its first step while MEMBENCH_TEST_HANG (a file path) exists, or always if unset."""

    name = "test-slow"

    def step(self, images, labels):
        pid_file = os.environ.get("MEMBENCH_TEST_PID_FILE")
        if pid_file:
            Path(pid_file).write_text(str(os.getpid()))
        hang = os.environ.get("MEMBENCH_TEST_HANG")
        while hang is None or Path(hang).exists():
            time.sleep(0.05)
        return super().step(images, labels)


class RaisingRunner(BPRunner):
    name = "test-raise"

    def step(self, images, labels):
        raise RuntimeError("deliberate failure in test-raise")


class SelfKillingRunner(BPRunner):
    name = "test-selfkill"

    def step(self, images, labels):
        os.kill(os.getpid(), signal.SIGKILL)


class ExitingRunner(BPRunner):
    name = "test-exit"

    def step(self, images, labels):
        os._exit(7)


class HostKillingRunner(BPRunner):
    """Kills the process that started its worker: under the ray executor, the Ray worker that
    runs the task (never use it with the local executor: that process is the sweep itself)."""

    name = "test-killhost"

    def step(self, images, labels):
        os.kill(multiprocessing.parent_process().pid, signal.SIGKILL)
        time.sleep(60)  # the worker goes down with its parent


class SleepingRunner(BPRunner):
    """Sleeps MEMBENCH_TEST_SLEEP_S seconds (1 by default) once per cell, in its first step."""

    name = "test-sleep"
    slept = False

    def step(self, images, labels):
        if not self.slept:
            self.slept = True
            time.sleep(float(os.environ.get("MEMBENCH_TEST_SLEEP_S", "1")))
        return super().step(images, labels)


class BarrierRunner(BPRunner):
    """Leaves a mark in MEMBENCH_TEST_BARRIER (a folder) and waits until MEMBENCH_TEST_BARRIER_N
    cells have left theirs: it ends ok only if that many cells run at the same time."""

    name = "test-barrier"

    def step(self, images, labels):
        folder = Path(os.environ["MEMBENCH_TEST_BARRIER"])
        (folder / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(folder.iterdir())) < int(os.environ["MEMBENCH_TEST_BARRIER_N"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the other cells never ran alongside this one")
            time.sleep(0.05)
        return super().step(images, labels)
'''
MISBEHAVING_NAMES = {
    "test-slow": "SlowRunner",
    "test-raise": "RaisingRunner",
    "test-selfkill": "SelfKillingRunner",
    "test-exit": "ExitingRunner",
    "test-killhost": "HostKillingRunner",
    "test-sleep": "SleepingRunner",
    "test-barrier": "BarrierRunner",
}


def install_fake_runners(tmp_path: Path, monkeypatch, source: str, names: dict[str, str]) -> Path:
    """Make ``source`` an importable module whose classes register as membench methods.

    ``names`` maps each method name to a class name defined in ``source``. Returns the folder
    put on the path. The module and distribution names are unique per call, so two tests (or two
    calls) never see each other's runners through an import cache.
    """
    token = uuid.uuid4().hex[:10]
    module = f"membench_fake_runners_{token}"
    site = Path(tmp_path) / f"fake_runners_site_{token}"
    dist_info = site / f"fake_runners_{token}-0.0.dist-info"
    dist_info.mkdir(parents=True)
    (site / f"{module}.py").write_text(source)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: fake-runners-{token}\nVersion: 0.0\n"
    )
    lines = [f"{method} = {module}:{cls}" for method, cls in names.items()]
    (dist_info / "entry_points.txt").write_text("[membench.methods]\n" + "\n".join(lines) + "\n")

    monkeypatch.syspath_prepend(str(site))
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(site) + (os.pathsep + existing if existing else ""))
    # The registry caches entry points; give it a fresh cache now and restore the old one after.
    fresh = functools.cache(membench.runners._entry_points.__wrapped__)
    monkeypatch.setattr(membench.runners, "_entry_points", fresh)
    return site


def install_misbehaving_runners(tmp_path: Path, monkeypatch) -> Path:
    """The slow, raising, self-killing, exiting, host-killing, sleeping and barrier runners the
    sweep tests use."""
    return install_fake_runners(tmp_path, monkeypatch, MISBEHAVING_RUNNERS, MISBEHAVING_NAMES)
