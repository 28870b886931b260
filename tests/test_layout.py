"""The package's layout as its docstrings state it: no import cycle, and each sub-package imports only what its
``__init__`` allows. The import graph is read from the source (every ``import``, at any depth of the module), so a
function-level import counts as much as a top-level one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "repro"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from repro.x import y`` counts as ``repro.x.y`` when that is a
    module, else as ``repro.x``)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("repro")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repro"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {target for target in targets if target in modules and target != "repro"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_graph_reader_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


# Sub-package -> the project packages and modules it may import, besides its own (as each __init__ states).
ALLOWED = {
    "repro.models": set(),
    "repro.data": {"repro.config"},
    "repro.analysis": {"repro.config", "repro.provenance", "repro.table_files"},
    "repro.training": {"repro.config", "repro.data", "repro.models", "repro.complexity", "repro.provenance"},
    "repro.runner": {"repro.config", "repro.data.registry", "repro.models", "repro.complexity", "repro.provenance"},
    # Not a package: the table writer of the analysis and of the training stage's repro.complexity imports neither.
    "repro.table_files": set(),
}
# The one module of the runner that reads the training code: it names the machine a proof ran on.
RUNNER_TRAINING = {"repro.runner.equivalence": {"repro.training.device"}}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_its_docstring_allows(package):
    allowed = ALLOWED[package]
    wrong = {}
    for module, targets in import_graph().items():
        if module != package and not module.startswith(package + "."):
            continue
        outside = {
            target
            for target in targets
            if not target.startswith(package)
            and not any(target == a or target.startswith(a + ".") for a in allowed)
            and target not in RUNNER_TRAINING.get(module, set())
        }
        if outside:
            wrong[module] = sorted(outside)
    assert wrong == {}


def test_only_the_named_modules_import_the_training_code():
    """The training code is imported by the notebooks, scripts and tests, and of the package's own modules only by
    those ``repro.training``'s docstring names."""
    importers = {
        module
        for module, targets in import_graph().items()
        if not module.startswith("repro.training") and any(t.startswith("repro.training") for t in targets)
    }
    assert importers == {"repro.nnunet", "repro.predict", "repro.runner.equivalence"}


# The data side of a run: what they do reaches the run only through its prepared folder, which the train stage
# depends on by content (a registry entry added for a new dataset must not make every committed run stale).
DATA_SIDE = {"repro.data.registry", "repro.data.prepare", "repro.data.readers", "repro.data.splits", "repro.data.card"}
# The package's root holds its docstring and version string only.
ROOT_PACKAGE = "repro"


def _executes_code(path: Path) -> bool:
    """False for a module that is only a docstring (a package's ``__init__`` that describes it)."""
    body = ast.parse(path.read_text()).body
    return not all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def test_the_training_stages_depend_on_every_module_the_training_code_runs():
    """A module the training path imports (at any depth, its packages' ``__init__`` included) that no training stage
    lists would change runs without making them stale: every one is a code dep of the ``train`` stage (which all
    training stages share), or on the data side (:data:`DATA_SIDE`)."""
    import yaml

    graph = import_graph()
    reached, todo = set(), [name for name in graph if name.startswith("repro.training")]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        parts = name.split(".")
        todo += [*graph[name], *(".".join(parts[:k]) for k in range(1, len(parts)))]
    stage = yaml.safe_load((PACKAGE.parent / "dvc.yaml").read_text())["stages"]["train"]
    deps = [dep for dep in stage["deps"] if "${" not in dep]
    paths = {
        name: (PACKAGE.parent / Path(*name.split("."))).with_suffix(".py")
        if not (PACKAGE.parent / Path(*name.split("."))).is_dir()
        else PACKAGE.parent / Path(*name.split(".")) / "__init__.py"
        for name in reached - DATA_SIDE - {ROOT_PACKAGE}
    }
    missing = sorted(
        name
        for name, path in paths.items()
        if _executes_code(path)
        and not any(path.relative_to(PACKAGE.parent).as_posix().startswith(dep.rstrip("/")) for dep in deps)
    )
    assert missing == [], f"dvc.yaml's train stage lists none of {missing}, which the training code runs"
