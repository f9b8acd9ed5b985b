"""The layout rules of DESIGN.md, checked on the source: layers that import only downwards, no
import cycle (counting ``TYPE_CHECKING`` blocks and imports inside functions), one owner module per
third-party package, files a reader can hold in their head, and who may change a run's status."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "iterprune"
ROOT = PACKAGE.parent
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60

# The packages from the top down (the layers contract in pyproject.toml says the same, and
# import-linter checks it; this list lets the tests below name a module's package).
PACKAGES = ["cli", "api", "serve", "report", "engine", "core", "state", "schedule", "errors"]

# A third-party package (or a part of one) and the only modules (or sub-packages) that may
# import it.
OWNERS = {
    "rich": {"report.console"},
    "apscheduler": {"serve.daemon", "schedule.window"},
    "sqlite3": {"state.connection"},
    "sqlite_utils": {"state.store", "state.migrations"},
    "torch_pruning": {"core.channels"},
    "torch.distributed": {"engine.distributed"},
    "matplotlib": {"report.plots"},
    "tensorboard": {"report.tensorboard"},
    "torch.utils.tensorboard": {"report.tensorboard"},
    "onnx": {"report.export"},
    "onnxscript": {"report.export"},
    "yaml": {"schedule.checker", "schedule.parsing", "schedule.sweeps"},
    "sklearn": {"engine.examples"},
    "safetensors": {"engine.sources", "report.export"},
    "torchvision": {"engine.sources", "schedule.factories"},
    "mlflow": {"report.mlflow"},
    "transformers": {"engine.huggingface"},
}

# Calls that change a run's status, and the modules that may make them (see state/store.py).
STATUS_CALLS = {"create_run", "finish_attempt", "fail_run"}
STATUS_WRITERS = {"state.store", "state.runs", "engine.runner"}


def modules() -> dict[str, Path]:
    """Every module by its dotted name below the package (``engine.runner``,
    ``report.console.tables``; a package's ``__init__`` is the package's own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def owned_by(name: str, owners: set[str]) -> bool:
    return any(name == o or name.startswith(o + ".") for o in owners)


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(imported module, line) of every import in the file, wherever it is: ``TYPE_CHECKING``
    blocks and imports inside functions count."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, node.lineno
            for alias in node.names:  # from iterprune.core import pruning
                yield f"{node.module}.{alias.name}", node.lineno
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; write the whole path")


def internal_graph() -> dict[str, set[str]]:
    """Which of iterprune's modules each module imports."""
    names = set(modules())
    graph: dict[str, set[str]] = {name: set() for name in names}
    for me, path in modules().items():
        for module, _ in imports(path):
            dotted = module.removeprefix("iterprune.")
            if not module.startswith("iterprune.") or dotted == me:
                continue
            while dotted and dotted not in names:  # iterprune.core.pruning.Mask -> core.pruning
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != me and not me.startswith(dotted + "."):
                graph[me].add(dotted)
    return graph


def test_every_module_sits_in_a_package_of_the_layers() -> None:
    loose = [
        name
        for name in modules()
        if name.split(".")[0] not in PACKAGES and name not in ("__init__", "__main__")
    ]
    assert loose == [], "add them to a package (and to the layers in pyproject.toml)"


def test_the_import_linter_contracts_hold() -> None:
    """The layers (no upward import between packages) and the torch-free read side, as CI
    checks them with import-linter's ``lint-imports``."""
    contracts = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]")[1]
    listed = set(re.findall(r"iterprune\.(\w+)", contracts.split("[[")[1]))
    assert listed == set(PACKAGES), "the layers list every package"
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_is_no_import_cycle_between_modules() -> None:
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


def test_no_module_imports_a_name_that_moved() -> None:
    """The old flat names still import (for pickles and old scripts) but nothing here uses them."""
    from iterprune import MOVED

    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for folder in ("iterprune", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for module, line in imports(path)
        if module.startswith("iterprune.") and module.split(".")[1] in MOVED
    ]
    assert wrong == []


def test_each_third_party_package_is_imported_by_its_owner_only() -> None:
    wrong = []
    for name, path in modules().items():
        for module, line in imports(path):
            for package, allowed in OWNERS.items():
                if module == package or module.startswith(package + "."):
                    if not owned_by(name, allowed):
                        wrong.append(f"iterprune.{name}:{line} imports {module}")
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
        if owned_by(key, STATUS_WRITERS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            receiver = node.func.value
            if isinstance(receiver, ast.Name) and receiver.id == "client":
                continue  # an MLflow client's runs (report/mlflow.py), not iterprune's
            sets_status = name == "update_run" and any(k.arg == "status" for k in node.keywords)
            if sets_status or name in STATUS_CALLS:
                wrong.append(f"iterprune.{key}:{node.lineno} calls {name}")
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
