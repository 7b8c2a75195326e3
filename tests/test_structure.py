"""The package's shape stays readable: module sizes, no import cycle, no module name shared
outside cli/, no arrow from the runners up, ruff's lint (function size and complexity among it)
and format clean, and a repository that stands alone (no pointer to a spec outside it). Each
check is shown failing on a small package or file made to break it."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("code_metrics", REPO / "scripts" / "code_metrics.py")
metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(metrics)

# One concept per module is what this cap guards; no linter checks it, so a module's size is
# held here, in statements (so that formatting moves nothing). A function's size and complexity
# are ruff's (PLR0915, PLR0912, C901 in pyproject.toml).
MAX_MODULE_STATEMENTS = 300
# "SPEC" as a document name: the product spec lives outside the repository.
OUTSIDE_SPEC = re.compile("SPEC" + r"(\.md| section)")


def problems(root: Path) -> list[str]:
    found = [
        f"{name}: {count} statements"
        for name, count in metrics.statement_counts(root).items()
        if count > MAX_MODULE_STATEMENTS
    ]
    found += [" -> ".join(cycle) for cycle in metrics.import_cycles(root)]
    return found


def test_membench_has_no_long_module_and_no_import_cycle():
    assert problems(metrics.PACKAGE) == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"__init__.py": "", "big.py": "x = 1\n" * 301}, "big: 301 statements"),
        (
            {
                "__init__.py": "",
                "a.py": "from . import b\n",
                "b.py": "def f():\n    from . import a\n",
            },
            "a -> pkg.b -> pkg.a",
        ),
    ],
)
def test_each_structure_check_fails_on_a_package_made_to_break_it(tmp_path, files, needle):
    root = _write(tmp_path / "pkg", files)
    assert any(needle in problem for problem in problems(root)), problems(root)


def ruff(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """ruff as CI runs it: the pinned version from the dev extra, this repository's settings."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True
    )


def test_the_tree_is_ruff_clean_lint_and_format():
    lint, formatted = ruff("check", "--no-cache", "."), ruff("format", "--check", "--no-cache", ".")
    assert lint.returncode == 0, lint.stdout
    assert formatted.returncode == 0, formatted.stdout


@pytest.mark.parametrize(
    ("source", "finding"),
    [
        ("x = '" + "a" * 100 + "'\n", "E501"),  # a line over 100 characters
        ("def f(x):\n" + "    x += 1\n" * 51 + "    return x\n", "PLR0915"),  # 52 statements
        (  # 13 branches: a function too complex to read top to bottom
            "def f(x):\n"
            + "".join(f"    if x == {i}:\n        return {i}\n" for i in range(13))
            + "    return x\n",
            "C901",
        ),
        ("import os\n", "F401"),  # an unused import
    ],
)
def test_ruff_flags_a_file_made_to_break_it(tmp_path, source, finding):
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text(source)
    found = ruff("check", "--no-cache", "--output-format", "concise", "bad.py", cwd=tmp_path)
    assert finding in found.stdout


def test_ruff_format_flags_a_file_it_would_change(tmp_path):
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("x = {'a':1}\n")
    assert ruff("format", "--check", "--no-cache", "bad.py", cwd=tmp_path).returncode == 1
    (tmp_path / "bad.py").write_text('x = {"a": 1}\n')
    assert ruff("format", "--check", "--no-cache", "bad.py", cwd=tmp_path).returncode == 0


def test_no_two_modules_outside_cli_share_a_name(tmp_path):
    # A command's module (cli/plan.py) may mirror the library module it calls (planning/plan.py).
    assert metrics.shared_module_names(metrics.PACKAGE) == {}
    root = _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "a/__init__.py": "",
            "a/ranks.py": "",
            "b/__init__.py": "",
            "b/ranks.py": "",
            "cli/__init__.py": "",
            "cli/a.py": "",
        },
    )
    assert metrics.shared_module_names(root) == {"ranks": ["pkg.a.ranks", "pkg.b.ranks"]}


# What a runner is made of, below what measures, predicts, runs or reports it: the thing measured
# never depends on its measurement (docs/design.md, "Folders").
RUNNER_MODULES = [
    "membench.runners",
    "membench.multidevice.spanning",
    "membench.multidevice.bp_runners",
    "membench.multidevice.ff_runner",
    "membench.multidevice.split",
]
ABOVE_RUNNERS = [
    "membench.measure",
    "membench.planning",
    "membench.timeline",
    "membench.execute",
    "membench.report",
    "membench.verify",
    "membench.cli",
    "membench.multidevice.launch",
    "membench.multidevice.rank_device",
    "membench.multidevice.fake_group",
    "membench.multidevice.rows",
    "membench.multidevice.schedule_model",
]


def test_runners_import_nothing_from_measurement(tmp_path):
    graph = metrics.import_graph(metrics.PACKAGE)
    assert metrics.imports_between(graph, RUNNER_MODULES, ABOVE_RUNNERS) == []
    # The check sees an arrow up, at module level or inside a function.
    root = _write(
        tmp_path / "membench",
        {
            "__init__.py": "",
            "measure/__init__.py": "",
            "measure/memtrack.py": "",
            "runners/__init__.py": "",
            "runners/optim.py": "def f():\n    from ..measure import memtrack\n",
        },
    )
    assert "membench.runners.optim -> membench.measure.memtrack" in metrics.imports_between(
        metrics.import_graph(root), RUNNER_MODULES, ABOVE_RUNNERS
    )


# The modules that compute with tensors; every other module (a new one included) must import
# without torch, so reading results, the CLI, the pytest plugin and the sweep process stay light.
NEEDS_TORCH = {
    "membench.archs.conv_stack",
    "membench.archs.layers",
    "membench.archs.probe",
    "membench.archs.registry",
    "membench.archs.resnet",
    "membench.runners.base",
    "membench.runners.bp",
    "membench.runners.ff",
    "membench.runners.saved_tensors",
    "membench.runners.optim",
    "membench.measure.devices",
    "membench.measure.memtrack",
    "membench.measure.flops",
    "membench.measure.calibrate",
    "membench.measure.protocol",
    "membench.planning.estimate",
    "membench.planning.cuda_autocast",
    "membench.planning.cuda_attention",
    "membench.planning.fit",
    "membench.timeline.phases",
    "membench.planning.plan",
    "membench.verify.checks",
    # Cells on several devices: the runners, a rank's measurement, the fake group, the launcher.
    "membench.multidevice.spanning",
    "membench.multidevice.bp_runners",
    "membench.multidevice.ff_runner",
    "membench.multidevice.rank_device",
    "membench.multidevice.fake_group",
    "membench.multidevice.launch",
    "membench.verify.across_devices",
    "membench.planning.layer_costs",
    "membench.runners.host_memory",
}


def torch_importers(names: list[str]) -> list[str]:
    """Which of ``names``, imported one after another in a fresh interpreter, imported torch."""
    code = (
        "import importlib, sys\nfound = []\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        found.append(name); break\n"
        "print(found)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout)


def test_only_the_modules_that_compute_import_torch():
    names = [name for name in metrics.modules() if name not in NEEDS_TORCH]
    assert torch_importers(names) == []
    # The check sees a torch import, also one a torch-free module makes through another.
    assert torch_importers(["membench.schema", "membench.measure.protocol"]) == [
        "membench.measure.protocol"
    ]
    assert set(NEEDS_TORCH) <= set(metrics.modules())  # no stale name


def repository_text_files() -> list[Path]:
    roots = [
        "membench",
        "tests",
        "benchmarks",
        "scripts",
        "docs",
        "examples",
        "profiles",
        "reports",
    ]
    files = [
        path
        for root in roots
        for path in (REPO / root).rglob("*")
        if path.is_file() and path.suffix in (".py", ".md", ".toml", ".sh")
    ]
    return files + [REPO / "README.md", REPO / "pyproject.toml"]


def test_no_file_points_to_a_spec_outside_the_repository():
    offenders = [
        str(path.relative_to(REPO))
        for path in repository_text_files()
        if OUTSIDE_SPEC.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []
    assert OUTSIDE_SPEC.search("see " + "SPEC" + " section 8")  # the pattern can match


PYTEST_LINE = re.compile(r"\.venv/bin/python -m pytest[^\n`]*?(?=\s*$|`)", re.MULTILINE)


def pytest_commands(text: str) -> list[str]:
    """The pytest command lines in a text (the README's test command, .ci/run), in order."""
    return [command.strip() for command in PYTEST_LINE.findall(text)]


def test_ci_runs_the_readmes_test_command_with_its_duration_table():
    readme = (REPO / "README.md").read_text()
    command = pytest_commands(readme[readme.index("**Run the tests**") :])[0]
    # CI runs the README's command and nothing else: no second, private pytest run.
    assert pytest_commands((REPO / ".ci" / "run").read_text()) == [command]
    assert "--durations=20" in command
    # The check can fail: a CI script that drops the table, or adds a run, is another script.
    assert pytest_commands(".venv/bin/python -m pytest -q\n") != [command]
    assert pytest_commands(f"{command}\n.venv/bin/python -m pytest -q -m slow\n") != [command]
