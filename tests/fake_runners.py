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
'''
MISBEHAVING_NAMES = {"test-slow": "SlowRunner", "test-raise": "RaisingRunner",
                     "test-selfkill": "SelfKillingRunner", "test-exit": "ExitingRunner"}


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
        f"Metadata-Version: 2.1\nName: fake-runners-{token}\nVersion: 0.0\n")
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
    """The slow, raising, self-killing and exiting runners the sweep tests use."""
    return install_fake_runners(tmp_path, monkeypatch, MISBEHAVING_RUNNERS, MISBEHAVING_NAMES)
