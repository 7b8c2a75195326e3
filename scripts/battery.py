"""A battery of bad inputs and faults over membench's newer commands, each checked for a clean
end: bad input is one line ``membench: error: ...`` and exit 2 before anything runs; a fault the
user cannot fix from the command line (a full disk behind stdout) is one line and exit 1; Ctrl-C
is one line ``membench: interrupted`` and exit 130, with nothing left behind; an accepted input
ends 0 without a traceback. Nothing may print a traceback or a path into site-packages.

    python scripts/battery.py [--only SUBSTRING] [--battery first|second] [--skip-slow] [--list]

Two batteries: the first over the cases an earlier trial of the newer commands hit; the second
over what the later wave added (device profiles and ``membench device``, ``--alloc-conf``,
``--cudnn-benchmark``, ``--fit-by``, token cells and ``hf:`` archs with their overrides and
local configs, ``--jobs``). Prints one line per case (``clean`` or ``NOT CLEAN: why``) and each
battery's counts; exits 1 if any case is not clean. Bad-input cases run in this process
through click's CliRunner (fast); the cases that need a real process (Ctrl-C, stdout on
/dev/full, a factory that hangs) run as ``python -c 'from membench.cli import main; main()'``
in their own process group. Small fixtures (a results folder with timelines, a cut
timeline.csv, a compare pair, user factories, device profiles and transformers configs) are
made in a temporary folder first. About half an hour on 2 shared cores (``--skip-slow``: the
in-process cases only, a few minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BAD, OK, FAIL, INTERRUPTED = "bad input", "ok", "one-line failure", "interrupted"
NOT_ERRORS = ("membench: warning:", "membench: note:")
TINY = ["--arch", "vgg-d2-w8", "--res", "8", "--batch", "2", "--warmup", "1", "--steps", "4"]


@dataclass
class Case:
    """One input: ``args`` to ``membench``, what a clean end is, and how to run it."""

    name: str
    args: list[str]
    expect: str = BAD
    needle: str = ""  # must appear in the output (the one line, for bad input)
    process: bool = False  # in a real process (signals, file descriptors)
    interrupt_after: float | None = None  # SIGINT this long after the start
    stdout_full: bool = False  # stdout on /dev/full
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[], str] | None = None  # after the run: '' when clean, else why not
    battery: str = "first"  # the battery, or "second": the options of the later wave


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    wall: float


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time: a logging handler made
    while one CliRunner call had captured stderr (transformers' own, on its first import)
    would otherwise write to that call's closed capture in every later call, a "Logging
    error" traceback the real command never prints."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _logging_follows_stderr() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    for handler in hf_logging.get_logger().handlers:
        if hasattr(handler, "setStream"):
            handler.setStream(_CurrentStderr())


def run_in_process(case: Case) -> Outcome:
    from typer.testing import CliRunner

    from membench.cli import app

    start = time.monotonic()
    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update(case.env)
    try:
        result = CliRunner().invoke(app, case.args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, result.stdout, stderr, time.monotonic() - start)


def run_in_process_group(case: Case, cwd: Path) -> Outcome:
    env = {**os.environ, **case.env}
    stdout = open(os.devnull if not case.stdout_full else "/dev/full", "w")  # noqa: SIM115
    start = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-c", "from membench.cli import main; main()", *case.args],
        stdout=subprocess.PIPE if not case.stdout_full else stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    if case.interrupt_after is not None:
        time.sleep(case.interrupt_after)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
    try:
        out, err = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += "\n(killed: no end within 600 s)"
    stdout.close()
    return Outcome(process.returncode, out or "", err or "", time.monotonic() - start)


def judge(case: Case, got: Outcome) -> str:
    """'' when the case ended cleanly, else why not."""
    text = got.stdout + got.stderr
    for mark in ("Traceback", "site-packages", "Exception ignored"):
        if mark in text:
            return f"{mark!r} in the output: {text.strip().splitlines()[-1][:200]}"
    lines = got.stderr.strip().splitlines()
    codes = {BAD: 2, OK: 0, FAIL: 1, INTERRUPTED: 130}
    if got.code != codes[case.expect]:
        return f"exit {got.code}, expected {codes[case.expect]}: {got.stderr.strip()[-300:]}"
    if case.expect in (BAD, FAIL, INTERRUPTED):
        # a warning or a note (the CPU's peak calibrated under load) goes beside the one line
        errors = [line for line in lines if not line.startswith(NOT_ERRORS)]
        if len(errors) != 1:
            return f"{len(errors)} lines on stderr, expected one: {got.stderr.strip()[-300:]}"
        prefix = "membench: interrupted" if case.expect == INTERRUPTED else "membench: error:"
        if not errors[0].startswith(prefix):
            return f"the line does not start with {prefix!r}: {errors[0][:200]}"
    if case.needle and case.needle not in text:
        return f"{case.needle!r} not in the output: {text.strip()[-300:]}"
    if case.check is not None:
        return case.check()
    return ""


# -- fixtures -------------------------------------------------------------------------------
FACTORIES = textwrap.dedent("""
    import sys, time

    def hangs(num_classes):
        while True:
            time.sleep(1)

    def exits(num_classes):
        sys.exit(3)

    def not_a_module(num_classes):
        return 42
""")


def make_fixtures(root: Path) -> dict[str, Path]:
    """A results folder with timelines (two cells), a copy with timeline.csv cut short, a copy
    swept without timelines, a folder that is not membench's, user factories."""
    from membench.config import build_config
    from membench.execute.sweep import sweep

    paths = {"root": root}
    results = root / "results"
    config = build_config(
        method=["bp", "ff-pipelined"],
        arch="vgg-d2-w8",
        res=8,
        batch=2,
        warmup=1,
        steps=4,
        device="cpu",
        isolation="none",
        timeline=True,
    )
    sweep(config, results)
    paths["results"] = results
    cut = root / "cut"
    shutil.copytree(results, cut)
    lines = (cut / "timeline.csv").read_text().splitlines(keepends=True)
    (cut / "timeline.csv").write_text("".join(lines[: len(lines) // 3]))
    paths["cut"] = cut
    plain = root / "plain"
    shutil.copytree(results, plain)
    (plain / "timeline.csv").unlink()
    paths["plain"] = plain
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "cells.csv").write_text("a,b,c\n1,2,3\n")
    paths["foreign"] = foreign
    (root / "battery_factories.py").write_text(FACTORIES)
    paths["report"] = root / "report"
    paths.update(make_wave_fixtures(root))
    return paths


# A device profile's [card] table with one figure changed, and what the change breaks.
CARD_FAULTS = {
    "bad-memory": ('memory = { value = "7966MiB"', 'memory = { value = "lots"'),
    "usable-over-memory": ('usable = { value = "7966MiB"', 'usable = { value = "9GiB"'),
    "bad-capability": ('compute_capability = "8.9"', 'compute_capability = "eight"'),
    "negative-ratio": ("[card]\n", "[card]\nconv_workspace_on = { value = -1, source = 'x' }\n"),
    "no-gpu": ('gpu = "NVIDIA GeForce RTX 4060 Laptop GPU"\n', ""),
    "not-toml": ("[card]", "[card"),
}
TINY_GPT2 = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 2,
    "n_positions": 64,
    "vocab_size": 128,
    "bos_token_id": 0,
    "eos_token_id": 0,
}


def make_wave_fixtures(root: Path) -> dict[str, Path]:
    """For the second battery: a device profile outside the profile folders (found by its
    path), one broken copy per CARD_FAULTS entry, and transformers configs (a small GPT-2, one
    that is not JSON, one without a model_type)."""
    import json

    from membench.profiles import PACKAGE_PROFILES_DIR

    text = (PACKAGE_PROFILES_DIR / "laptop-8gb.toml").read_text()
    paths = {"card": root / "my-card.toml"}
    paths["card"].write_text(text)
    for fault, (old, new) in CARD_FAULTS.items():
        assert old in text, fault
        paths[fault] = root / f"card-{fault}.toml"
        paths[fault].write_text(text.replace(old, new))
    hf = root / "hf"
    for name, content in (
        ("tiny", json.dumps(TINY_GPT2)),
        ("not-json", "{model_type: gpt2"),
        ("no-type", json.dumps({"n_layer": 2})),
    ):
        (hf / name).mkdir(parents=True)
        (hf / name / "config.json").write_text(content)
        paths[f"hf-{name}"] = hf / name / "config.json"
    return paths


def report_intact(report: Path) -> Callable[[], str]:
    """After an interrupted report: the earlier one is whole (every figure it links exists)."""

    def check() -> str:
        text = (report / "report.md").read_text()
        missing = [
            line.split("](")[1].rstrip(")")
            for line in text.splitlines()
            if line.startswith("![") and not (report / line.split("](")[1].rstrip(")")).exists()
        ]
        left = [p.name for p in report.iterdir() if p.name.startswith(".")]
        if missing or left:
            return f"missing figures {missing[:3]}, left behind {left}"
        return ""

    return check


# -- the cases --------------------------------------------------------------------------------
def cases(p: dict[str, Path]) -> list[Case]:
    r, cut, plain, foreign = (str(p[k]) for k in ("results", "cut", "plain", "foreign"))
    plan = ["plan", "--gpu", "laptop-8gb", "--res", "8", "--batch", "4"]
    fit = ["fit", "--device-mem", "1GiB", "--res", "8", "--device-kind", "cpu"]
    sched = ["schedule", "--arch", "vgg-d4-w8", "--res", "8", "--batch", "8"]
    out = ["--out", str(p["root"] / "never")]
    return [
        # plan
        Case("plan unknown resnet", ["plan", "--gpu", "laptop-8gb", "--arch", "resnet57"]),
        Case("plan unknown tv model", ["plan", "--gpu", "laptop-8gb", "--arch", "tv:nonexistent"]),
        Case("plan unknown timm model", [*plan, "--arch", "timm:no_such_model"]),
        Case(
            "plan ambiguous gpu",
            ["plan", "--gpu", "H100", "--device-mem", "8GiB"],
            needle="ambiguous",
        ),
        Case(
            "plan unknown gpu",
            ["plan", "--gpu", "Z999", "--device-mem", "8GiB"],
            needle="unknown GPU",
        ),
        Case("plan no budget", ["plan", "--gpu", "H200"], needle="budget"),
        Case("plan empty list item", [*plan, "--arch", "vgg-d2-w8", "--precision", "fp32,,bf16"]),
        Case("plan bad precision", [*plan, "--arch", "vgg-d2-w8", "--precision", "fp8"]),
        Case("plan zero batch", [*plan[:-2], "--batch", "0", "--arch", "vgg-d2-w8"]),
        Case("plan negative link", [*plan, "--arch", "vgg-d2-w8", "--link-gbps", "-1"]),
        Case("plan zero top", [*plan, "--arch", "vgg-d2-w8", "--top", "0"]),
        Case("plan nan budget", ["plan", "--gpu", "H200", "--device-mem", "nan"]),
        Case("plan res too small", ["plan", "--gpu", "laptop-8gb", "--res", "2"]),
        Case("plan huge arch", ["plan", "--gpu", "laptop-8gb", "--arch", "vgg-d4-w9999999"]),
        Case("plan tiny cell", [*plan, "--arch", "vgg-d2-w8"], expect=OK, needle="rank"),
        # fit
        Case("fit no budget", ["fit", "--arch", "vgg-d2-w8", "--res", "8"], needle="--device-mem"),
        Case("fit unknown arch", [*fit, "--arch", "resnet57"]),
        Case("fit unknown method", [*fit, "--arch", "vgg-d2-w8", "--method", "bpx"]),
        Case(
            "fit micro-batch on bp",
            [*fit, "--arch", "vgg-d2-w8", "--method", "bp", "--micro-batch", "2"],
        ),
        Case("fit empty method item", [*fit, "--arch", "vgg-d2-w8", "--method", "bp,"]),
        Case("fit bad device kind", [*fit, "--arch", "vgg-d2-w8", "--device-kind", "tpu"]),
        Case("fit zero max batch", [*fit, "--arch", "vgg-d2-w8", "--max-batch", "0"]),
        Case("fit bad budget", ["fit", "--device-mem", "lots", "--arch", "vgg-d2-w8"]),
        Case(
            "fit ambiguous gpu", [*fit, "--arch", "vgg-d2-w8", "--gpu", "A100"], needle="ambiguous"
        ),
        Case(
            "fit budget below one sample",
            [
                "fit",
                "--device-mem",
                "1",
                "--res",
                "8",
                "--device-kind",
                "cpu",
                "--arch",
                "vgg-d2-w8",
                "--method",
                "ff-naive,bp",
            ],
            expect=OK,
            needle="none",
        ),
        Case(
            "fit tiny",
            [*fit, "--arch", "vgg-d2-w8", "--method", "bp", "--max-batch", "8"],
            expect=OK,
        ),
        # schedule
        Case("schedule unknown arch", ["schedule", "--arch", "resnet57"]),
        Case("schedule non-stack arch", ["schedule", "--arch", "tv:resnet18", "--res", "32"]),
        Case("schedule empty devices item", [*sched, "--micro-batch", "2", "--devices", "2,,4"]),
        Case("schedule one device", [*sched, "--micro-batch", "2", "--devices", "1"]),
        Case("schedule too many devices", [*sched, "--micro-batch", "2", "--devices", "9"]),
        Case("schedule micro-batch not dividing", [*sched, "--micro-batch", "3", "--devices", "2"]),
        Case(
            "schedule bad source",
            [*sched, "--micro-batch", "2", "--devices", "2", "--source", "gpu"],
        ),
        Case(
            "schedule ambiguous gpu",
            [*sched, "--micro-batch", "2", "--devices", "2", "--gpu", "H100"],
        ),
        Case(
            "schedule ok",
            [*sched, "--micro-batch", "2", "--devices", "2,4"],
            expect=OK,
            needle="bubble",
        ),
        # timeline
        Case("timeline no folder", ["timeline", str(p["root"] / "nowhere")]),
        Case("timeline folder without timelines", ["timeline", plain], needle="--timeline --redo"),
        Case("timeline cut file", ["timeline", cut], expect=OK, needle="incomplete"),
        Case("timeline foreign folder", ["timeline", foreign]),
        Case("timeline unknown cell", ["timeline", r, "--cell", "nope"]),
        Case("timeline ok", ["timeline", r], expect=OK, needle="peak"),
        Case("timeline one cell", ["timeline", r, "--cell", "bp_vgg-d2-w8_r8_b2_k10"], expect=OK),
        Case(
            "timeline > /dev/full",
            ["timeline", r],
            expect=FAIL,
            process=True,
            stdout_full=True,
            needle="No space left",
        ),
        # compare
        Case("compare missing baseline", ["compare", str(p["root"] / "nowhere"), r]),
        Case("compare foreign", ["compare", foreign, r]),
        Case("compare negative threshold", ["compare", r, r, "--max-tput-drop", "-1"]),
        Case("compare alpha 0", ["compare", r, r, "--alpha", "0"]),
        Case("compare nan memory threshold", ["compare", r, r, "--max-mem-increase", "nan"]),
        Case("compare itself", ["compare", r, r], expect=OK, needle="PASS"),
        Case("compare > /dev/full", ["compare", r, r], expect=FAIL, process=True, stdout_full=True),
        # report
        Case("report nothing", ["report", str(p["root"] / "nowhere"), *out]),
        Case("report foreign", ["report", foreign, *out]),
        Case("report empty budget item", ["report", r, "--budget", "1GiB,,2GiB", *out]),
        Case("report bad budget", ["report", r, "--budget", "lots", *out]),
        Case("report ambiguous gpu", ["report", r, "--gpu", "H100", *out], needle="ambiguous"),
        Case(
            "report out is a file", ["report", r, "--out", str(p["root"] / "battery_factories.py")]
        ),
        Case("report empty out", ["report", r, "--out", ""]),
        Case("report ok", ["report", r, "--out", str(p["report"])], expect=OK),
        Case(
            "report Ctrl-C keeps the earlier one",
            ["report", r, "--out", str(p["report"]), "--budget", "8GiB"],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=6.0,
            check=report_intact(p["report"]),
        ),
        # sweep: lists, inapplicable options, rounds, user code
        Case("sweep empty batch item", ["sweep", *TINY[:4], "--batch", "1,2,,4", *out]),
        Case(
            "sweep schedule on bp",
            ["sweep", *TINY[:4], "--method", "bp", "--schedule", "gpipe", *out],
        ),
        Case("sweep devices on bp", ["sweep", *TINY[:4], "--method", "bp", "--devices", "2", *out]),
        Case("sweep rounds 0", ["sweep", *TINY, "--rounds", "0", *out]),
        Case("sweep rounds with estimate", ["sweep", *TINY, "--rounds", "3", "--estimate", *out]),
        Case(
            "sweep rounds in process",
            ["sweep", *TINY, "--rounds", "3", "--isolation", "none", *out],
        ),
        Case(
            "sweep factory sys.exit",
            ["sweep", "--arch", "battery_factories:exits", "--res", "8", *out],
            env={"PYTHONPATH": str(p["root"])},
            needle="sys.exit(3)",
        ),
        Case(
            "sweep factory not a module",
            ["sweep", "--arch", "battery_factories:not_a_module", "--res", "8", *out],
            env={"PYTHONPATH": str(p["root"])},
        ),
        Case(
            "sweep factory hangs",
            ["sweep", "--arch", "battery_factories:hangs", "--res", "8", *out],
            process=True,
            env={"PYTHONPATH": str(p["root"]), "MEMBENCH_PROBE_TIMEOUT_S": "3"},
            needle="did not return within 3 s",
        ),
        Case(
            "sweep bad probe bound",
            ["sweep", "--arch", "battery_factories:exits", "--res", "8", *out],
            env={"PYTHONPATH": str(p["root"]), "MEMBENCH_PROBE_TIMEOUT_S": "soon"},
        ),
        Case(
            "sweep > /dev/full",
            ["sweep", *TINY, "--device", "cpu", "--out", str(p["root"] / "full")],
            expect=FAIL,
            process=True,
            stdout_full=True,
        ),
        Case(
            "sweep timeline on finished cells",
            [
                "sweep",
                "--method",
                "bp,ff-pipelined",
                *TINY[:6],
                "--warmup",
                "1",
                "--steps",
                "4",
                "--device",
                "cpu",
                "--timeline",
                "--out",
                plain,
            ],
            expect=OK,
            needle="no recorded step",
        ),
        # Ctrl-C in the middle of the newer commands
        Case(
            "plan Ctrl-C",
            [
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
            ],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=12.0,
        ),
        Case(
            "fit Ctrl-C",
            ["fit", "--arch", "vgg11", "--res", "224", "--device-mem", "8GiB"],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=12.0,
        ),
        Case(
            "schedule cpu Ctrl-C",
            ["schedule", "--source", "cpu"],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=10.0,
        ),
        Case(
            "verify Ctrl-C",
            ["verify", "--method", "ff-pipelined"],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=10.0,
        ),
    ]


def rows_say(folder: Path, **expected: str) -> Callable[[], str]:
    """After a sweep: every row of ``folder`` has these values (status='estimated', ...)."""

    def check() -> str:
        import csv

        with open(folder / "cells.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        wrong = [
            f"{row['cell_id']}: {key}={row[key]!r}"
            for row in rows
            for key, value in expected.items()
            if row[key] != value
        ]
        return "; ".join(wrong[:3]) if wrong or not rows else ""

    return check


def nothing_written(folder: Path) -> Callable[[], str]:
    """After bad input: the results folder was never made."""
    return lambda: f"{folder} was written" if folder.exists() else ""


def nothing_left(folder: Path) -> Callable[[], str]:
    """After an interrupted sweep: no lock or half-written file left in ``folder``."""

    def check() -> str:
        if not folder.exists():  # interrupted before its first row
            return ""
        left = [p.name for p in folder.iterdir() if p.name.startswith(".") or "tmp" in p.name]
        return f"left behind {left}" if left else ""

    return check


def wave_cases(p: dict[str, Path]) -> list[Case]:
    """The second battery: what the later wave added (device profiles, allocator options,
    cuDNN benchmark, fit-by, token cells and hf: archs, parallel estimates), over every command
    that takes it."""
    root = p["root"]
    never = root / "never"
    est = ["sweep", "--estimate", *TINY[:6], "--out", str(never)]
    fit = ["fit", *TINY[:4], "--device-mem", "1GiB", "--method", "bp"]
    plan = ["plan", "--gpu", "laptop-8gb", *TINY[:6]]
    gpt2 = "hf:gpt2?n_layer=2&n_embd=64&n_head=2"
    hf_fit = ["fit", "--device-mem", "1GiB", "--method", "bp", "--seq", "16"]
    hf_est = ["sweep", "--estimate", "--batch", "2", "--seq", "16", "--out", str(never)]
    cases = [
        # device profiles: names, files, the show and calibrate commands
        Case("device show unknown", ["device", "show", "nosuch"], needle="device profiles:"),
        Case("device show sweep profile", ["device", "show", "quick"], needle="no [card] table"),
        Case("device show missing file", ["device", "show", str(root / "none.toml")]),
        *(
            Case(f"device show card {fault}", ["device", "show", str(p[fault])])
            for fault in CARD_FAULTS
        ),
        Case("device show two", ["device", "show", "h200", "rtx-4090"], expect=OK, needle="h200"),
        Case(
            "device show by path", ["device", "show", str(p["card"])], expect=OK, needle="my-card"
        ),
        Case("device calibrate bad name", ["device", "calibrate", "My_Card"], needle="a-z, 0-9"),
        Case("device calibrate on cpu", ["device", "calibrate", "x", "--device", "cpu"]),
        Case(
            "sweep unknown device profile",
            [*est, "--device-profile", "nosuch"],
            check=nothing_written(never),
        ),
        Case("sweep device profile without card", [*est, "--device-profile", "quick"]),
        Case(
            "sweep device profile by path",
            ["sweep", "-p", str(p["card"]), *est[1:-1], str(root / "card-sweep")],
            expect=OK,
            check=rows_say(root / "card-sweep", status="estimated", device_profile="my-card"),
        ),
        Case("fit gpu by path", [*fit, "--gpu", str(p["card"]), "--max-batch", "2"], expect=OK),
        Case("plan gpu broken card", [*plan, "--gpu", str(p["bad-memory"])], needle="[card]"),
        Case("fit gpu broken card", [*fit, "--gpu", str(p["bad-memory"])], needle="[card]"),
        Case("fit device profile without card", ["fit", *TINY[:4], "--device-profile", "quick"]),
        Case("plan unknown device profile", [*plan, "--device-profile", "nosuch"]),
        Case(
            "plan gpu and another device profile",
            [*plan, "--device-profile", "a100-40gb", "--precision", "fp32"],
            expect=OK,
            needle="device total on a100-40gb",
        ),
        # --alloc-conf: PyTorch's parser's refusals, the model's limits, the list
        *(
            Case(f"alloc-conf {conf}", [*est, "--alloc-conf", conf], needle=needle)
            for conf, needle in (
                ("nosuch:True", "unknown key"),
                ("expandable_segments:yes", "True or False"),
                ("max_split_size_mb:abc", "whole number"),
                ("max_split_size_mb:1", "too small"),
                ("garbage_collection_threshold:nan", "finite"),
                ("roundup_power2_divisions:3", "power of 2"),
                ("roundup_power2_divisions:[256:4", "ended where"),
                ("expandable_segments:True,max_split_size_mb:-5", "whole number"),
                ("expandable_segments:True,,", "unknown key ','"),
                ("backend:cudaMallocAsync", "cannot be estimated"),
                ("per_process_memory_fraction:0.5", "cannot be estimated"),
            )
        ),
        Case(
            "alloc-conf two in one process",
            [
                "sweep",
                *TINY,
                "--isolation",
                "none",
                "--alloc-conf",
                "default;expandable_segments:True",
            ],
            needle="--isolation process",
        ),
        Case(
            "alloc-conf expandable and default estimated",
            [*est[:-1], str(root / "alloc"), "--alloc-conf", "expandable_segments:True;default"],
            expect=OK,
            check=rows_say(root / "alloc", status="estimated"),
        ),
        Case(
            "alloc-conf on a cpu measurement",
            [
                "sweep",
                *TINY,
                "--device",
                "cpu",
                "--alloc-conf",
                "expandable_segments:True",
                "--out",
                str(root / "alloc-cpu"),
            ],  # fmt: skip
            expect=OK,
            needle="runs on CUDA",
        ),
        # --cudnn-benchmark and --fit-by
        Case("cudnn-benchmark maybe", [*est, "--cudnn-benchmark", "maybe"]),
        Case("cudnn-benchmark empty item", [*est, "--cudnn-benchmark", "on,,"]),
        Case("cudnn-benchmark true", [*est, "--cudnn-benchmark", "true"]),
        Case("fit-by peak", [*est, "--fit-by", "peak"]),
        Case("fit fit-by list", [*fit, "--fit-by", "total,reserved"]),
        Case(
            "sweep fit-by on a measurement",
            ["sweep", *TINY, "--device", "cpu", "--fit-by", "reserved", "--out", str(never)],
        ),  # fmt: skip
        Case(
            "sweep device profile on a measurement",
            ["sweep", *TINY, "--device-profile", "h200", "--out", str(never)],
        ),  # fmt: skip
        Case(
            "fit fit-by on a cpu estimate", [*fit, "--device-kind", "cpu", "--fit-by", "reserved"]
        ),
        Case(
            "fit device profile on a cpu estimate",
            [*fit, "--device-kind", "cpu", "--device-profile", "h200"],
        ),  # fmt: skip
        # token settings on image archs
        Case("sweep seq on an image arch", [*est, "--seq", "64"], needle="take images"),
        Case("sweep objective on an image arch", [*est, "--objective", "causal-lm"]),
        Case("sweep attention on an image arch", [*est, "--attn-implementation", "sdpa"]),
        Case("fit seq on an image arch", [*fit, "--seq", "64"], needle="takes images"),
        Case(
            "fit seq on an image arch, every method",
            [*fit[:-2], "--seq", "64"],
            needle="takes images",
        ),
        Case("fit objective on an image arch", [*fit, "--objective", "causal-lm"]),
        Case("fit attention on an image arch", [*fit, "--attn-implementation", "sdpa"]),
        Case("fit batch on an image arch", [*fit, "--batch", "4"], needle="token models"),
        Case("plan seq on an image arch", [*plan, "--seq", "64"]),
        Case("plan objective on an image arch", [*plan, "--objective", "causal-lm"]),
        # hf: names, overrides, local configs, token settings
        Case("hf unknown model type", [*hf_fit, "--arch", "hf:nomodel"]),
        Case("hf empty name", [*hf_fit, "--arch", "hf:"]),
        Case("hf override not a number", [*hf_fit, "--arch", "hf:gpt2?n_layer=abc"]),
        Case("hf override unknown field", [*hf_fit, "--arch", "hf:gpt2?n_lyr=2"]),
        Case("hf override without value", [*hf_fit, "--arch", "hf:gpt2?n_layer"]),
        Case("hf override trailing &", [*hf_fit, "--arch", "hf:gpt2?n_layer=2&"]),
        Case("hf override null", [*hf_fit, "--arch", "hf:gpt2?vocab_size=null"]),
        Case("hf heads not dividing", [*hf_fit, "--arch", "hf:gpt2?n_embd=64&n_head=3"]),
        Case("hf zero width", [*hf_fit, "--arch", "hf:gpt2?n_embd=0"]),
        Case("hf missing config.json", [*hf_fit, "--arch", f"hf:{root / 'hf' / 'none.json'}"]),
        Case("hf config not json", [*hf_fit, "--arch", f"hf:{p['hf-not-json']}"]),
        Case("hf config without model_type", [*hf_fit, "--arch", f"hf:{p['hf-no-type']}"]),
        Case(
            "hf local config",
            [*hf_fit, "--arch", f"hf:{p['hf-tiny']}", "--max-batch", "2", "--jobs", "1"],
            expect=OK,
            needle="bp",
        ),
        Case("hf without seq", ["sweep", "--estimate", "--arch", gpt2, "--out", str(never)]),
        Case("hf seq 0", [*hf_est[:-4], "--seq", "0", "--arch", gpt2, "--out", str(never)]),
        Case("hf seq past positions", [*hf_fit[:-1], "99999", "--arch", gpt2], needle="positions"),
        Case("hf seq empty item", [*hf_fit[:-1], "16,,32", "--arch", gpt2]),
        Case("hf channels_last", [*hf_est, "--arch", gpt2, "--memory-format", "channels_last"]),
        Case("hf objective without head", [*hf_fit, "--arch", gpt2, "--objective", "masked-lm"]),
        Case("hf encoder as decoder", [*hf_fit, "--arch", "hf:bert", "--objective", "causal-lm"]),
        Case("hf unknown objective", [*hf_fit, "--arch", gpt2, "--objective", "translation"]),
        Case("hf attention flash", [*hf_fit, "--arch", gpt2, "--attn-implementation", "flash"]),
        Case(
            "hf flash without package",
            [*hf_fit, "--arch", gpt2, "--attn-implementation", "flash_attention_2"],
        ),  # fmt: skip
        Case(
            "hf layer-local without blocks",
            [*hf_est, "--arch", "hf:gpt2?n_layer=0", "--method", "ff-pipelined"],
        ),  # fmt: skip
        Case("hf rounds with estimate", [*hf_est, "--arch", gpt2, "--rounds", "3"]),
        Case(
            "hf classification no classes",
            [*hf_est, "--arch", gpt2, "--objective", "classification", "--classes", "0"],
        ),  # fmt: skip
        Case("hf no seq nor batch for fit", ["fit", "--device-mem", "1GiB", "--arch", gpt2]),
        Case("hf fit max-batch 0", [*hf_fit, "--arch", gpt2, "--max-batch", "0"]),
        Case(
            "image and token archs in one grid",
            [
                "sweep",
                "--estimate",
                "--arch",
                f"vgg-d2-w8,{gpt2}",
                "--res",
                "8",
                "--seq",
                "16",
                "--batch",
                "2",
                "--out",
                str(root / "mixed"),
            ],  # fmt: skip
            expect=OK,
            check=rows_say(root / "mixed", status="estimated"),
        ),
        # parallel estimates
        Case("plan jobs 0", [*plan, "--jobs", "0"]),
        Case("fit jobs -1", [*fit, "--jobs", "-1"]),
        Case("sweep jobs abc", [*est, "--jobs", "abc"]),
        Case("sweep jobs on a measurement", ["sweep", *TINY, "--jobs", "2", "--out", str(never)]),
        Case("plan budget list", [*plan, "--device-mem", "1GiB,2GiB"]),
        Case("plan budget 0", [*plan, "--device-mem", "0"]),
        Case(
            "sweep estimate jobs 2 Ctrl-C",
            ["sweep", "-p", "quick", "--estimate", "--jobs", "2", "--out", str(root / "jobs")],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=15.0,
            check=nothing_left(root / "jobs"),
        ),
        Case(
            "fit hf Ctrl-C",
            ["fit", "--device-mem", "8GiB", "--seq", "256", "--arch", "hf:gpt2"],
            expect=INTERRUPTED,
            process=True,
            interrupt_after=12.0,
        ),
    ]
    for case in cases:
        case.battery = "second"
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name has this")
    parser.add_argument("--skip-slow", action="store_true", help="in-process cases only")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--battery", default="", choices=("", "first", "second"), help="one battery only"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="membench-battery-"))
    try:
        sys.path.insert(0, str(root))
        paths = (
            make_fixtures(root)
            if not args.list
            else {k: root for k in ("results", "cut", "plain", "foreign", "root", "report")}
            | {k: root for k in ("card", *CARD_FAULTS, "hf-tiny", "hf-not-json", "hf-no-type")}
        )
        _logging_follows_stderr()
        everything = cases(paths) + wave_cases(paths)
        chosen = [c for c in everything if args.only in c.name and args.battery in c.battery]
        if args.skip_slow:
            chosen = [c for c in chosen if not c.process]
        if args.list:
            for case in chosen:
                print(f"{case.name}: membench {' '.join(case.args)}")
            return 0
        not_clean: dict[str, list[bool]] = {}
        for case in chosen:
            got = run_in_process_group(case, root) if case.process else run_in_process(case)
            why = judge(case, got)
            not_clean.setdefault(case.battery, []).append(bool(why))
            print(
                f"{'clean' if not why else 'NOT CLEAN'} ({got.wall:.1f} s) [{case.battery}] "
                f"{case.name}" + (f": {why}" if why else ""),
                flush=True,
            )
        for battery, flags in not_clean.items():
            print(
                f"{battery} battery: {len(flags) - sum(flags)} clean, {sum(flags)} not, "
                f"of {len(flags)} cases"
            )
        return 1 if any(any(flags) for flags in not_clean.values()) else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
