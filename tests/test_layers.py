"""The package's layers, read from the source: the core knows no web framework and no
database driver, and no module imports, at run time, one that imports it back.

Like test_database's check that SQL lives in store.py, this reads the code (with ast)
rather than running it: an import under `if TYPE_CHECKING:` is for the type checker
only and does not count; neither does one inside a function (it runs later, when every
module is loaded).
"""

from __future__ import annotations

import ast
from pathlib import Path

from enot_builder.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "enot_builder"
# The web framework and the database driver (aiopg is the driver's asyncio face).
FORBIDDEN = {"aiohttp", "psycopg2", "aiopg"}
# The domain, the core that turns requests into builds, the build and the queue.
CORE = ["domain.py", "retry.py", "build_requests.py", "submission.py", "dependencies.py",
        "validation.py", "layout.py", "storage/**/*.py", "build/**/*.py", "queue/**/*.py"]
# Modules of the core that may still import one: each with the reason.
KNOWN: dict[str, set[str]] = {}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is loaded."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    visit(block)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                visit(node.body)
            # Functions and classes: an import in a function body runs later.

    visit(ast.parse(path.read_text(), str(path)).body)
    return found


def _top_level_packages(path: Path) -> set[str]:
    names = set()
    for node in runtime_imports(path):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def core_modules() -> list[Path]:
    found = set()
    for pattern in CORE:
        found |= set(PACKAGE.glob(pattern))
    return sorted(found)


def test_the_core_imports_no_web_framework_or_database_driver() -> None:
    modules = core_modules()
    assert PACKAGE / "domain.py" in modules and PACKAGE / "validation.py" in modules
    offenders = {}
    for path in modules:
        name = path.relative_to(PACKAGE).as_posix()
        imported = (_top_level_packages(path) & FORBIDDEN) - KNOWN.get(name, set())
        if imported:
            offenders[name] = sorted(imported)
    assert offenders == {}


def test_known_exceptions_are_still_needed() -> None:
    """An exception that is no longer needed is dropped from KNOWN (or its file is gone)."""
    for name, allowed in KNOWN.items():
        path = PACKAGE / name
        if path.exists():
            assert _top_level_packages(path) & allowed, f"{name} no longer needs KNOWN"


def test_imports_under_type_checking_do_not_count(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    import aiopg\nelse:\n    import json\n"
                      "def later():\n    import psycopg2\n"
                      "try:\n    import aiohttp\nexcept ImportError:\n    pass\n")
    assert _top_level_packages(module) == {"typing", "json", "aiohttp"}


# --- no import cycle ----------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_from(package: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    base = package
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it is loaded."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in runtime_imports(path):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _imported_from(package, node)
                # `from x import y`: y is a module of x, or a name defined in x. A
                # package's own modules importing their siblings (`from . import y`)
                # read the package being loaded, not a cycle.
                submodules = [f"{base}.{alias.name}" for alias in node.names]
                names_only_modules = all(m in modules for m in submodules)
                sibling = name.startswith(base + ".") and names_only_modules
                targets = submodules if sibling else [base] + submodules
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node):] + [node]
        if node in done:
            return None
        visiting.append(node)
        for child in sorted(graph[node]):
            cycle = visit(child)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_there_is_no_import_cycle() -> None:
    graph = import_graph()
    assert "enot_builder.api.build" in graph["enot_builder.routes"]
    assert find_cycle(graph) is None


def test_keys_import_nothing_of_the_package() -> None:
    assert import_graph()["enot_builder.keys"] == set()


def test_a_cycle_is_found() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


# --- the seam between the core and the web layer ------------------------------------

def test_every_domain_exception_has_its_status() -> None:
    """A refusal the core adds to domain.py gets a status in errors.STATUS, not a 500."""
    from enot_builder import domain, errors
    refusals = {value for value in vars(domain).values() if isinstance(value, type)
                and issubclass(value, domain.DomainError) and value is not domain.DomainError}
    assert refusals and refusals <= set(errors.STATUS)
    assert errors.status_of(domain.RepositoryConflict("bound elsewhere")) == 409
    assert errors.status_of(domain.InvalidInput("ref", "bad tag")) == 400


def test_no_module_is_over_400_lines() -> None:
    """Issue 10's bound: a module past it is doing two jobs."""
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}
