"""Structure metrics of the membench package: lines per module, the longest functions, import
cycles inside the package. ``python scripts/code_metrics.py [PACKAGE_DIR]``; the structure test
(tests/test_structure.py) enforces the limits with the same functions."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "membench"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def line_counts(root: Path = PACKAGE) -> dict[str, int]:
    return {name: len(path.read_text().splitlines()) for name, path in modules(root).items()}


def statement_counts(root: Path = PACKAGE) -> dict[str, int]:
    """Statements per module (every ``ast.stmt``, nested ones included): a size formatting does
    not change."""
    return {
        name: sum(isinstance(node, ast.stmt) for node in ast.walk(ast.parse(path.read_text())))
        for name, path in modules(root).items()
    }


def function_lengths(root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(lines, 'module.qualname') of every function and method, longest first."""
    out = []
    for name, path in modules(root).items():
        tree = ast.parse(path.read_text())

        def visit(node, prefix, name=name):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out.append(
                        (child.end_lineno - child.lineno + 1, f"{name}.{prefix}{child.name}")
                    )
                    visit(child, f"{prefix}{child.name}.", name)
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

        visit(tree, "")
    return sorted(out, reverse=True)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at module level or inside a function."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            for target in targets:
                if target in mods and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def import_cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Cycles among imports (a package importing its own submodule is not one)."""
    graph = import_graph(root)
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep.startswith(node + "."):
                continue  # a package's __init__ importing its own submodules
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def shared_module_names(root: Path = PACKAGE, allowed: str = "cli") -> dict[str, list[str]]:
    """Module file names (``__init__`` aside) that more than one module outside the ``allowed``
    subpackage has, with the modules that share each: a name should say which concept it holds."""
    by_name: dict[str, list[str]] = {}
    for name, path in modules(root).items():
        inside = name.split(".")[1:2] == [allowed]
        if path.name != "__init__.py" and not inside:
            by_name.setdefault(path.stem, []).append(name)
    return {stem: names for stem, names in by_name.items() if len(names) > 1}


def imports_between(graph: dict[str, set[str]], lower: list[str], upper: list[str]) -> list[str]:
    """``a -> b`` for every module ``a`` under a prefix in ``lower`` that imports a module ``b``
    under a prefix in ``upper``: an arrow from a lower floor up to a higher one."""

    def under(name: str, prefixes: list[str]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return sorted(
        f"{a} -> {b}"
        for a, deps in graph.items()
        if under(a, lower)
        for b in deps
        if under(b, upper)
    )


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    counts = line_counts(root)
    statements = statement_counts(root)
    for name, lines in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{lines:5d} lines {statements[name]:5d} statements  {name}")
    print(f"{sum(counts.values()):5d}  total in {len(counts)} modules")
    print("longest functions:")
    lengths = function_lengths(root)
    for lines, name in lengths[:5]:
        print(f"{lines:5d}  {name}")
    print(f"functions over 60 lines: {sum(1 for n, _ in lengths if n > 60)}")
    print(f"import cycles: {import_cycles(root) or 'none'}")


if __name__ == "__main__":
    main()
