"""The layers of docs/ARCHITECTURE.md, enforced: imports only go down, and never in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own layer and the ones below it, never one above.
LAYERS = [
    ("core", ["tailor", "tailor.columns", "tailor.settings", "tailor.env"]),
    ("data", ["tailor.data"]),
    ("models", ["tailor.models"]),
    ("ranking", ["tailor.ranking"]),
    ("tracking", ["tailor.tracking"]),
    ("serving", ["tailor.serving"]),
    ("evaluation", ["tailor.evaluation"]),
    ("stages", ["tailor.stages"]),
    ("tasks", ["tasks"]),
    ("flows", ["flows"]),
    ("cli", ["tailor.cli"]),
]


def layer_of(module: str) -> int | None:
    best, depth = None, -1
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = level, len(prefix)
    return best


def project_modules() -> dict[str, Path]:
    out = {}
    for package in ("tailor", "tasks", "flows"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules imported anywhere in the file (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert [m for m in project_modules() if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, imported in graph().items():
        for other in imported:
            if layer_of(other) > layer_of(module):
                wrong.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports "
                    f"{other} ({LAYERS[layer_of(other)][0]})"
                )
    assert wrong == []


def test_there_is_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_library_below_tasks_never_imports_prefect():
    offenders = []
    for name, path in project_modules().items():
        if layer_of(name) >= layer_of("tasks"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(n == "prefect" or n.startswith("prefect.") for n in names):
                    offenders.append(name)
    assert offenders == []


def test_nothing_cites_a_file_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    citing = []
    this = str(Path(__file__).relative_to(ROOT))
    for name in tracked:
        path = ROOT / name
        if name == this:
            continue
        if path.suffix not in {".py", ".md", ".yaml", ".toml", ".txt"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        if "DESIGN.md" in text or "../shared" in text:
            citing.append(name)
    assert citing == []


def test_the_stage_children_start_without_mlflow_or_prefect():
    # A child process (tailor.stages.child) runs beside the flow on a core of its own: every
    # second of its start-up is on the run's critical path, and it logs nothing itself.
    code = (
        "import sys, tailor.stages.baselines, tailor.stages.train; "
        "print(sorted(m for m in ('mlflow', 'prefect') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
