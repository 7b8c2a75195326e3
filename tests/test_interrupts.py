"""Ctrl-C at any moment of a sweep is one line and exit 130, from the sweep and from every
process it started: while the sweep imports torch, while the forkserver imports torch._dynamo
(the worker processes' preload), and in the middle of a cell. Ctrl-C goes to the whole process
group, as a terminal sends it; each moment is reached exactly by an import hook."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from execute.test_sweep import WAIT_S, process_gone, wait_for
from fake_runners import install_misbehaving_runners

# Installed as sitecustomize in every interpreter of the test's process group: sends Ctrl-C to
# the group when $MEMBENCH_TEST_INTERRUPT_AT is imported by the sweep process ("sweep") or by the
# forkserver ("forkserver", the process that imported multiprocessing.forkserver to serve).
HOOK = """
import importlib.abc, os, signal, sys

class _CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("MEMBENCH_TEST_INTERRUPT_AT") and not hasattr(self, "fired"):
            serving = "multiprocessing.forkserver" in sys.modules and sys.argv[:1] == ["-c"] \\
                and "membench.cli" not in sys.modules
            if serving == (os.environ.get("MEMBENCH_TEST_INTERRUPT_IN") == "forkserver"):
                self.fired = True
                os.killpg(os.getpgrp(), signal.SIGINT)
        return None

sys.meta_path.insert(0, _CtrlC())
"""
SWEEP = [
    "sweep",
    "--arch",
    "vgg-d2-w8",
    "--res",
    "8",
    "--batch",
    "2",
    "--warmup",
    "1",
    "--steps",
    "2",
    "--device",
    "cpu",
]


def start_sweep(tmp_path: Path, *extra: str, **environ: str) -> subprocess.Popen:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, **environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from membench.cli import main; main()",
            *SWEEP,
            "--out",
            str(tmp_path / "out"),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def assert_one_line(sweep: subprocess.Popen) -> str:
    try:
        _, stderr = sweep.communicate(timeout=WAIT_S)  # until every process of it has closed
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGKILL)
        pytest.fail("the interrupted sweep did not exit")
    lines = stderr.strip().splitlines()
    assert sweep.returncode == 130 and len(lines) == 1, stderr
    assert lines[0].startswith("membench: interrupted") and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("module", "where"),
    [("torch", "sweep"), pytest.param("torch._dynamo", "forkserver", marks=pytest.mark.slow)],
)
def test_ctrl_c_while_importing_is_one_line(tmp_path, module, where):
    sweep = start_sweep(
        tmp_path, MEMBENCH_TEST_INTERRUPT_AT=module, MEMBENCH_TEST_INTERRUPT_IN=where
    )
    assert_one_line(sweep)
    assert not (tmp_path / "out" / "cells.csv").exists()


@pytest.mark.slow
def test_ctrl_c_in_the_middle_of_a_cell_is_one_line_and_the_worker_goes(tmp_path, monkeypatch):
    install_misbehaving_runners(tmp_path / "site", monkeypatch)
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv("MEMBENCH_TEST_PID_FILE", str(pid_file))
    monkeypatch.delenv("MEMBENCH_TEST_HANG", raising=False)  # test-slow hangs until killed
    sweep = start_sweep(tmp_path, "--method", "bp,test-slow")
    wait_for(pid_file.exists, "the slow cell to start")
    os.killpg(sweep.pid, signal.SIGINT)
    line = assert_one_line(sweep)
    assert "finished cells are saved" in line
    wait_for(lambda: process_gone(int(pid_file.read_text())), "the worker to exit")
    assert [
        row.split(",")[1] for row in (tmp_path / "out" / "cells.csv").read_text().splitlines()[1:]
    ] == ["bp"]


def forkserver_ignores_sigint(tmp_path: Path, start: str) -> bool:
    """Start a forkserver the way ``start`` names, with a preload that blocks (as torch's
    import takes seconds), and read whether SIGINT cannot interrupt it while it preloads: it
    ignores the signal or blocks it (the kernel's SigIgn and SigBlk masks). ``threaded`` starts
    it as fit's searches do, from a thread that is not the main one."""
    marker = tmp_path / f"preloading-{start}"
    (tmp_path / "blocking_preload.py").write_text(
        "import os, pathlib, time\n"
        "pathlib.Path(os.environ['MEMBENCH_TEST_MARKER']).touch()\ntime.sleep(60)\n"
    )
    code = (
        "import multiprocessing.forkserver as f, sys\n"
        "import threading\n"
        "from membench.execute.worker import _start_forkserver\n"
        "def threaded():\n"
        "    thread = threading.Thread(target=_start_forkserver)\n"
        "    thread.start()\n"
        "    thread.join()\n"
        "f.set_forkserver_preload(['blocking_preload'])\n"
        f"{start}()\n"
        "print(f._forkserver._forkserver_pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    env = {
        **os.environ,
        "MEMBENCH_TEST_MARKER": str(marker),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    with subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as parent:
        pid = int(parent.stdout.readline())
        wait_for(marker.exists, "the forkserver to preload")
        status = Path(f"/proc/{pid}/status").read_text()
        os.kill(pid, signal.SIGKILL)
        parent.stdin.close()
    masks = [
        int(
            next(line for line in status.splitlines() if line.startswith(f"{mask}:")).split()[1], 16
        )
        for mask in ("SigIgn", "SigBlk")
    ]
    return any(mask & (1 << (signal.SIGINT - 1)) for mask in masks)


def test_the_forkserver_ignores_ctrl_c_from_its_start(tmp_path):
    assert forkserver_ignores_sigint(tmp_path, "_start_forkserver")
    # The check can fail: a forkserver started as multiprocessing starts it takes Ctrl-C while it
    # preloads (and prints a traceback from the import it is in).
    assert not forkserver_ignores_sigint(tmp_path, "f.ensure_running")


def test_a_forkserver_started_from_a_thread_ignores_ctrl_c_too(tmp_path):
    # fit's searches start their workers (and so the forkserver) in threads; Ctrl-C then printed
    # the forkserver's traceback from the torch import it was in (membench fit, SIGINT at 12 s)
    assert forkserver_ignores_sigint(tmp_path, "threaded")


class _InterruptedWhileFinalized:
    """Its finalizer is where Ctrl-C lands: the handler runs inside ``__del__``, where Python
    can only report the KeyboardInterrupt as unraisable (as it did in StorageWeakRef.__del__
    during an estimate) and carry on."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


def test_an_interrupt_that_lands_in_a_finalizer_is_delivered_again(capfd):
    from membench import interrupts

    interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            _InterruptedWhileFinalized()  # made and freed at once: its __del__ runs here
            for _ in range(WAIT_S * 100):  # the redelivered Ctrl-C ends this wait
                time.sleep(0.01)
    finally:
        interrupts.uninstall()
    assert "Exception ignored" not in capfd.readouterr().err  # one line, no report of it


def test_without_the_hook_the_interrupt_is_lost(monkeypatch):
    """The check above can fail: Python hands the interrupt to the unraisable hook (its own
    prints "Exception ignored in ...") and nothing else ever sees it."""
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable))
    _InterruptedWhileFinalized()
    for _ in range(20):
        time.sleep(0.01)  # no KeyboardInterrupt arrives
    assert [type(u.exc_value) for u in seen] == [KeyboardInterrupt]
