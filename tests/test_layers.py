"""The architecture as the imports draw it: each part imports only the parts below it, and no cycle.

    common (wire format, errors, request context) < ops < iss < console < upstream < chat
        < handlers < app (the composition root) < server (the process)

config.py sits beside common: every part may read the settings. A handler never imports server.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

RANKS = {
    "config": 0, "services.common": 0, "services.ops": 1, "services.iss": 2, "services.console": 3,
    "services.upstream": 4, "services.chat": 5, "handlers": 6, "app": 7, "server": 8,
}
SOURCES = ["app.py", "server.py", "config.py", "handlers", "services"]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for source in SOURCES:
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = file
    return found


def _typing_only(tree: ast.AST) -> set[ast.AST]:
    """The import statements under `if TYPE_CHECKING:`: read by the type checker, never run."""
    return {
        child
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
        for child in ast.walk(statement)
    }


def _imports(file: Path, name: str, known: set[str], runtime: bool = False) -> set[str]:
    """The project modules `file` imports, wherever the import statement sits (lazy ones count too);
    with `runtime`, without those under TYPE_CHECKING."""
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    tree = ast.parse(file.read_text(), str(file))
    skip = _typing_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _rank(module: str) -> int | None:
    best = None
    for prefix, rank in RANKS.items():
        if module == prefix or module.startswith(prefix + "."):
            best = rank
    return best


GRAPH = {name: _imports(file, name, set(_modules())) for name, file in _modules().items()}
RUNTIME = {name: _imports(file, name, set(_modules()), runtime=True) for name, file in _modules().items()}


def test_every_module_belongs_to_a_part() -> None:
    unplaced = [name for name in GRAPH if _rank(name) is None and name not in {"services", "handlers"}]
    assert not unplaced, f"modules outside every part (add them to a part's package): {unplaced}"


def test_no_part_imports_a_part_above_it() -> None:
    upward = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if (_rank(name) or 0) < (_rank(target) or 0)
    ]
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_handler_imports_the_process_or_the_composition_root() -> None:
    bad = [f"{name} -> {target}" for name, targets in GRAPH.items() if name.startswith("handlers")
           for target in targets if target in {"server", "app"}]
    assert not bad, bad


def test_no_import_cycle_at_run_time() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(RUNTIME.get(name, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(RUNTIME):
        if name not in state and (cycle := visit(name)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule bites: an import of the chat path from the ISS part is found as upward."""
    file = tmp_path / "probe.py"
    file.write_text("from services.chat.exchange import Exchange\n")
    targets = _imports(file, "services.iss.probe", set(GRAPH) | {"services.iss.probe"})
    assert "services.chat.exchange" in targets
    assert _rank("services.iss.probe") < _rank("services.chat.exchange")  # type: ignore[operator]


def test_no_runtime_code_awaits_with_asyncio_wait_for():
    # Python 3.11's wait_for loses a cancel that comes as the awaited thing finishes (a worker's
    # Redis feed then never stopped); services.common.futures.within is the one way to await with a limit.
    found = [f"{path.relative_to(ROOT)}:{node.lineno}"
             for path in _modules().values()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "wait_for"
             and isinstance(node.value, ast.Name) and node.value.id == "asyncio"]
    assert found == []
