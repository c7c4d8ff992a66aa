"""The package's shape, held by a test (ADR 12): the engine never imports the tools around it (the
local stack, the sample platforms, the fleet simulator, the demo), no import circle, no package
file over 600 lines, and the DAG files import the steps they run (no step looked up by name)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "include" / "tenant_migration"
DAGS = PKG.parents[1] / "dags"
TOOLS = ("tenant_migration.stack", "tenant_migration.sample", "tenant_migration.demo")


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function bodies too), as dotted names."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] == "tenant_migration"}


MODULES = {_module(p): p for p in PKG.rglob("*.py")}


def _is_tool(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TOOLS)


ENGINE = sorted(m for m in MODULES if not _is_tool(m))


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_imports_no_tool(module: str) -> None:
    bad = sorted(m for m in _imports(MODULES[module]) if _is_tool(m))
    assert not bad, f"{module} imports {bad}: the engine gets what it needs through an interface (ADR 12)"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("tenant_migration.stack")))
def test_the_local_stack_imports_no_platform(module: str) -> None:
    """The stack hosts a platform it is told of (``TM_PLATFORM``); the platform builds on the stack."""
    bad = sorted(m for m in _imports(MODULES[module]) if _is_tool(m) and not m.startswith("tenant_migration.stack"))
    assert not bad, f"{module} imports {bad}"


def test_nothing_in_the_package_imports_the_steps_facade() -> None:
    users = sorted(m for m, p in MODULES.items() if m != "tenant_migration.steps"
                   and "tenant_migration.steps" in _imports(p))
    assert not users, f"{users} import tenant_migration.steps: import the phase module (flows.*) instead"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        # ``from tenant_migration.flows import go`` names the module tenant_migration.flows.go
        graph[module] = {m for m in _imports(path) if m in MODULES and m != module
                         and not module.startswith(m + ".")}  # a module's own package is not an arrow
    return graph


def test_no_import_circle() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                circles.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_no_package_file_is_over_600_lines() -> None:
    big = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not big, f"split these (HOUSE_STYLE: one concept per module): {big}"


@pytest.mark.parametrize("path", sorted(DAGS.glob("*.py")), ids=lambda p: p.stem)
def test_dag_files_run_no_step_by_name(path: Path) -> None:
    text = path.read_text()
    assert "getattr(" not in text
    assert not re.search(r"_call\(\s*[\"']", text), "pass the step itself (phase_module.step), not its name"


def _sample_names() -> tuple[re.Pattern[str], set[str]]:
    """From the sample's own profile: its schema and keyspace (qualified uses), and its table and
    registration-switch column names."""
    from tenant_migration.sample import profile

    prof = profile()
    tmap = prof.tenant_map
    tables = set(tmap.tables) | set(tmap.shared_tables) | set(tmap.cassandra_tables)
    columns = set(re.findall(r"\b(registrations_\w+|suspension_\w+)\b", " ".join(
        [prof.registrations.status, prof.registrations.suspend, prof.registrations.resume])))
    # Multi-word names anywhere (comments too); one-word names ("devices", "users": the domain's
    # words) only where code uses them as names: string constants, below.
    distinctive = {n for n in tables | columns if "_" in n} | {n for n in tables if n.endswith("points")}
    words = [rf"\b{re.escape(tmap.schema)}\.\w+", rf"\b{re.escape(tmap.keyspace)}\b"] + [
        rf"\b{re.escape(n)}\b" for n in sorted(distinctive)]
    # The schema's bare name is left to the qualified pattern: the sample's is "platform", the word
    # the engine's own param and the stack's database are called by.
    return re.compile("|".join(words)), tables | columns | {tmap.keyspace}


ENGINE_FILES = sorted([p for p in PKG.rglob("*.py") if "sample" not in p.relative_to(PKG).parts]
                      + [p for p in (PKG / "runbooks").glob("*.md")] + sorted(DAGS.glob("*.py"))
                      + sorted((PKG.parents[1] / "plugins").rglob("*.py")))


def test_no_sample_name_outside_sample() -> None:
    """Issue 30, item 2: only ``sample/`` and the sample's profile name the sample's schemas,
    keyspace, tables and switch columns. The grep of the closing note, as a test."""
    pattern, names = _sample_names()
    found = []
    for path in ENGINE_FILES:
        text = path.read_text()
        found += [f"{path.relative_to(PKG.parents[1])}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
                  for m in pattern.finditer(text)]
        if path.suffix == ".py":
            docstrings = {id(n.body[0].value) for n in ast.walk(ast.parse(text))
                          if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
                          and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
            found += [f"{path.relative_to(PKG.parents[1])}:{n.lineno}: {n.value!r}" for n in ast.walk(ast.parse(text))
                      if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
                      and n.value in names]
    assert not found, "the engine names the sample platform; take it from the profile:\n" + "\n".join(found)
