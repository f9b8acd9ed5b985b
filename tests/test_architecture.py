"""The layout rules of DESIGN.md, checked on the source: layers that import only downwards, no
import cycle (counting ``TYPE_CHECKING`` blocks and imports inside functions), one owner module per
third-party package, files a reader can hold in their head, and who may change a run's status."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "iterprune"
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60

# Each module imports only from its own layer and the layers before it.
LAYERS = {
    "leaves": {"errors", "paths", "faults", "rng", "specs", "window", "evidence"},
    "config": {"checker", "factories", "inputs", "operations", "sections", "schedule", "sweeps"},
    "core": {
        *("pruning", "channels", "training", "evaluation", "sources", "examples", "latency"),
        "analysis",
        "selection",
        "sensitivity",
    },
    "decisions": {"decisions"},
    "infrastructure": {
        *("store", "migrations", "checkpoints", "snapshots", "runs", "distributed", "backlog"),
    },
    "engine": {
        *("recipe", "workbench", "baseline", "reporter", "attempts", "resumption", "runner"),
        "orders",
    },
    "service": {"daemon", "server"},
    "edges": {
        *(
            "views",
            "console",
            "plots",
            "board",
            "export",
            "launch",
            "supervisor",
            "commands",
            "cli",
        ),
        "targets",
        "api",
        "tracking",
        "serving",
        *("__init__", "__main__"),
    },
}

# A third-party package (or a part of one) and the only modules that may import it.
OWNERS = {
    "rich": {"console"},
    "apscheduler": {"daemon", "window"},
    "sqlite3": {"store"},
    "sqlite_utils": {"store", "migrations"},
    "torch_pruning": {"channels"},
    "torch.distributed": {"distributed"},
    "matplotlib": {"plots"},
    "tensorboard": {"board"},
    "torch.utils.tensorboard": {"board"},
    "onnx": {"export"},
    "onnxscript": {"export"},
    "yaml": {"checker", "schedule", "sweeps"},
    "sklearn": {"examples"},
    "safetensors": {"sources", "export"},
    "torchvision": {"sources", "factories"},
    "mlflow": {"tracking"},
}

# Calls that change a run's status, and the modules that may make them (see store.py).
STATUS_CALLS = {"create_run", "finish_attempt", "fail_run"}
STATUS_WRITERS = {"store", "runs", "runner"}


def modules() -> dict[str, Path]:
    """Every module by its path in the package (``runner.py``, ``console/tables.py``)."""
    return {str(p.relative_to(PACKAGE)): p for p in sorted(PACKAGE.rglob("*.py"))}


def owner(key: str) -> str:
    """The module a file is, for the rules: a sub-package's files belong to the package."""
    return key.split("/")[0].removesuffix(".py")


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) of every import in the file, wherever it is."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            for alias in node.names:  # from iterprune import pruning
                yield f"{node.module}.{alias.name}", node.lineno
        elif isinstance(node, ast.ImportFrom):  # relative: inside a sub-package
            yield f"iterprune.{path.parent.name}.{node.module or ''}", node.lineno


def internal_graph() -> dict[str, set[str]]:
    names = {owner(k) for k in modules()}
    graph: dict[str, set[str]] = {name: set() for name in names}
    for key, path in modules().items():
        me = owner(key)
        for module, _ in imports(path):
            parts = module.split(".")
            if parts[0] == "iterprune" and len(parts) > 1 and parts[1] in names and parts[1] != me:
                graph[me].add(parts[1])
    return graph


def layer_of(name: str) -> int:
    for index, members in enumerate(LAYERS.values()):
        if name in members:
            return index
    raise AssertionError(f"iterprune/{name} is in no layer of tests/test_architecture.py")


def test_every_module_is_in_a_layer_and_imports_only_downwards() -> None:
    wrong = [
        f"{a} ({list(LAYERS)[layer_of(a)]}) imports {b} ({list(LAYERS)[layer_of(b)]})"
        for a, deps in internal_graph().items()
        for b in deps
        if layer_of(b) > layer_of(a)
    ]
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    graph = internal_graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] + [name]
        if name in done:
            return None
        for dep in sorted(graph[name]):
            cycle = visit(dep, path + [name])
            if cycle:
                return cycle
        done.add(name)
        return None

    for name in sorted(graph):
        cycle = visit(name, [])
        assert cycle is None, " -> ".join(cycle)


def test_each_third_party_package_is_imported_by_its_owner_only() -> None:
    wrong = []
    for key, path in modules().items():
        for module, line in imports(path):
            for package, allowed in OWNERS.items():
                if module == package or module.startswith(package + "."):
                    if owner(key) not in allowed:
                        wrong.append(f"iterprune/{key}:{line} imports {module}")
    assert wrong == []


@pytest.mark.parametrize("key", sorted(modules()))
def test_modules_and_functions_are_short(key: str) -> None:
    path = modules()[key]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{key}: {len(text.splitlines())} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_only_the_listed_modules_change_a_runs_status() -> None:
    wrong = []
    for key, path in modules().items():
        if owner(key) in STATUS_WRITERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            receiver = node.func.value
            if isinstance(receiver, ast.Name) and receiver.id == "client":
                continue  # an MLflow client's runs (tracking.py), not iterprune's
            sets_status = name == "update_run" and any(k.arg == "status" for k in node.keywords)
            if sets_status or name in STATUS_CALLS:
                wrong.append(f"iterprune/{key}:{node.lineno} calls {name}")
    assert wrong == []


def test_few_formatter_exemptions_each_with_a_reason() -> None:
    root = PACKAGE.parent
    skips = [
        (path, line)
        for folder in ("iterprune", "tests", "bench")
        for path in sorted((root / folder).rglob("*.py"))
        for line in path.read_text().splitlines()
        if "fmt: skip" in line and path.name != "test_architecture.py"
    ]
    assert len(skips) <= 5, skips
    for path, line in skips:  # the reason follows the pragma
        assert len(line.split("fmt: skip", 1)[1].strip(" #")) > 10, f"{path}: {line}"
