"""scripts/gpu_validate.sh, checked without a GPU: it parses (``bash -n``), every step is bounded
by ``timeout``, and what it runs exists here: each membench command and option, each test path,
the pytest plugin its options need. Each check is shown failing on a one-line mutation."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from membench.cli import app

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_validate.sh"
MEMBENCH = "${membench[@]}"


def logical_lines(text: str) -> list[str]:
    """The script's lines with backslash continuations joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and line.strip()[0] != "#"]


def membench_problems(args: list[str]) -> list[str]:
    """What of ``membench ARGS...`` does not exist: a command, or an option of it."""
    command = typer.main.get_command(app)  # typer's own click: a group is what has commands
    words = list(args)
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        name = words.pop(0)
        if name not in command.commands:
            return [f"membench has no command {name!r}"]
        command = command.commands[name]
    known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    return [
        f"membench {command.name} has no option {word}"
        for word in words
        if word.startswith("--") and word.split("=")[0] not in known
    ]


def pytest_problems(args: list[str]) -> list[str]:
    """Test paths that do not exist; plugin options without their plugin."""
    found = [f"no test path {a}" for a in args if a.startswith("tests") and not (REPO / a).exists()]
    if any(a.startswith("--benchmark") for a in args) and not importlib.util.find_spec(
        "pytest_benchmark"
    ):
        found.append("--benchmark-* options need pytest-benchmark")
    return found


def command_problems(command: list[str]) -> list[str]:
    """What one bounded step's command runs that does not exist."""
    if command[:2] == ["bash", "-c"]:  # bash -c '"$@" ARGS' $0 "${membench[@]}"
        inner = shlex.split(command[2])
        if MEMBENCH in command[3:] and inner[0] == "$@":
            return membench_problems([w for w in inner[1:] if w not in (">", '"$0"', "$0")])
    if MEMBENCH in command:
        return membench_problems(command[command.index(MEMBENCH) + 1 :])
    if "pytest" in command:
        return pytest_problems(command[command.index("pytest") + 1 :])
    return []


def script_problems(text: str) -> list[str]:
    """Every step that is not bounded by a timeout, and what a step runs that does not exist."""
    found = []
    for line in logical_lines(text):
        words = line.split()
        if words[0] == "step" and "timeout" not in words:
            found.append(f"unbounded step: {line}")
        if words[0] != "bounded" or line.startswith("bounded()"):
            continue
        tokens = shlex.split(line)
        if len(tokens) < 4 or not tokens[2].isdigit() or int(tokens[2]) <= 0:
            found.append(f"a bounded step needs NAME SECONDS COMMAND: {line}")
            continue
        found += command_problems(tokens[3:])
    return found


def test_the_script_parses():
    assert shutil.which("bash")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_every_step_is_bounded_and_runs_what_exists():
    text = SCRIPT.read_text()
    assert script_problems(text) == []
    # the checks read every step: the script has its calibration, replay and sweeps
    steps = [line.split()[1] for line in logical_lines(text) if line.startswith("bounded ")]
    assert {"calibrate", "allocator-replay", "gpu-tests", "estimate-vgg11"} <= set(steps)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("bounded calibrate 600", "step calibrate", "unbounded step"),
        ("bounded report 900", "bounded report soon", "NAME SECONDS COMMAND"),
        ("--device-profile", "--device-profil", "no option --device-profil"),
        ("device calibrate", "device calibrat", "no command 'calibrat'"),
        ("tests/measure/test_cuda_terms.py", "tests/measure/test_cuda_term.py", "no test path"),
        ("env --json >", "env --jsn >", "no option --jsn"),
    ],
)
def test_each_check_fails_on_a_mutation(old, new, problem):
    text = SCRIPT.read_text()
    assert old in text
    found = script_problems(text.replace(old, new, 1))
    assert len(found) == 1 and problem in found[0], found
