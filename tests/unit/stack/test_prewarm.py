"""The scheduler-only import warm-up of the local stack's LocalExecutor (stack/prewarm.py)."""

from __future__ import annotations

import ast

import pytest

from tenant_migration.stack import prewarm


@pytest.mark.parametrize(("argv", "expected"), [
    pytest.param(["/x/.venv/bin/airflow", "scheduler"], True, id="standalone's scheduler"),
    pytest.param(["/x/.venv/bin/airflow", "dag-processor"], False, id="dag-processor parses with nothing warmed"),
    pytest.param(["/x/.venv/bin/airflow", "api-server"], False, id="api-server"),
    pytest.param(["/x/.venv/bin/airflow", "dags", "list"], False, id="another CLI command"),
    pytest.param(["/x/bin/pytest", "scheduler"], False, id="not airflow"),
    pytest.param(["python"], False, id="bare interpreter"),
])
def test_only_the_scheduler_installs_the_hook(argv: list[str], expected: bool, monkeypatch) -> None:
    hooks: list[object] = []
    threads: list[object] = []
    monkeypatch.setattr(prewarm.os, "register_at_fork", lambda **kw: hooks.append(kw["before"]))
    monkeypatch.setattr("threading.Thread", lambda **kw: threads.append(kw["target"]))
    assert prewarm.install(argv) is expected
    assert hooks == ([prewarm.warm] if expected else [])
    assert threads == []


def test_dags_test_imports_great_expectations_in_the_background(monkeypatch) -> None:
    """``airflow dags test`` (``make demo``) runs the tasks in its own process: no fork hook, one
    background thread that runs ``CALLS`` (and only those) once Airflow has initialised."""
    from types import SimpleNamespace

    hooks: list[object] = []
    started: list[object] = []

    class Thread:
        def __init__(self, target, name, daemon) -> None:
            assert daemon, "a warm-up must never keep the CLI alive"
            self.target = target

        def start(self) -> None:
            started.append(self.target)

    monkeypatch.setattr(prewarm.os, "register_at_fork", lambda **kw: hooks.append(kw["before"]))
    monkeypatch.setattr("threading.Thread", Thread)
    assert prewarm.install(["/x/.venv/bin/airflow", "dags", "test", "tenant_migration"]) is True
    assert hooks == [] and started == [prewarm._warm_calls_after_airflow]
    imported: list[str] = []
    called: list[str] = []

    def import_module(name: str) -> SimpleNamespace:
        imported.append(name)
        return SimpleNamespace(import_gx=lambda: called.append(name), prewarm_data_docs=lambda: called.append(name))
    monkeypatch.setattr(prewarm.importlib, "import_module", import_module)
    frozen: list[bool] = []
    monkeypatch.setattr(prewarm.gc, "freeze", lambda: frozen.append(True))
    started[0]()
    assert frozen == [True]  # what the warm-up loaded is kept out of every later full collection
    calls = [c.partition(":")[0] for c in prewarm.CALLS]
    # Airflow's package only (to wait for its initialisation), then GX: no other Airflow module,
    # the main thread imports those.
    assert imported == ["airflow", *calls] and called == calls


def test_warm_imports_every_module_and_runs_every_call_once(monkeypatch) -> None:
    from types import SimpleNamespace

    imported: list[str] = []
    called: list[str] = []

    def import_module(name: str) -> SimpleNamespace:
        imported.append(name)
        return SimpleNamespace(import_gx=lambda: called.append(name), prewarm_data_docs=lambda: called.append(name))
    monkeypatch.setattr(prewarm, "_warmed", False)
    monkeypatch.setattr(prewarm.importlib, "import_module", import_module)
    assert prewarm.warm() == []
    calls = [c.partition(":")[0] for c in prewarm.CALLS]
    assert imported == [*prewarm.MODULES, *calls] and called == calls
    assert prewarm.warm() == [] and called == calls  # the second fork imports nothing


def test_great_expectations_is_warmed_the_way_the_gates_import_it() -> None:
    from tenant_migration.validation import gx_gate

    module, _, function = prewarm.CALLS[0].partition(":")
    assert module == gx_gate.__name__ and getattr(gx_gate, function) is gx_gate.import_gx
    module, _, function = prewarm.CALLS[1].partition(":")
    assert module == gx_gate.__name__ and getattr(gx_gate, function) is gx_gate.prewarm_data_docs


def test_warm_never_raises_and_names_what_failed(monkeypatch) -> None:
    from types import SimpleNamespace

    def fail(name: str) -> None:
        raise RuntimeError(name)

    def boom(name: str) -> SimpleNamespace:
        if name == "psycopg":
            raise ImportError(name)
        return SimpleNamespace(import_gx=lambda: fail(name), prewarm_data_docs=lambda: fail(name))

    monkeypatch.setattr(prewarm, "_warmed", False)
    monkeypatch.setattr(prewarm.importlib, "import_module", boom)
    assert prewarm.warm() == ["psycopg", *prewarm.CALLS]


def test_every_warmed_module_exists() -> None:
    import importlib.util

    assert [m for m in prewarm.MODULES if importlib.util.find_spec(m) is None] == []


def test_local_settings_export_nothing_into_airflow_settings() -> None:
    tree = ast.parse(prewarm.LOCAL_SETTINGS)
    alls = [n for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "__all__"]
    assert len(alls) == 1 and isinstance(alls[0].value, ast.List) and alls[0].value.elts == []


def test_stack_files_put_the_local_settings_where_airflow_imports_them(tmp_path) -> None:
    from tenant_migration.stack import airflow_env
    from tenant_migration.stack.topology import Topology

    topo = Topology(state_dir=tmp_path)
    airflow_env.write_files(topo)
    # Airflow puts $AIRFLOW_HOME/config on sys.path and imports airflow_local_settings from it.
    assert (topo.airflow_home / "config" / "airflow_local_settings.py").read_text() == prewarm.LOCAL_SETTINGS
    assert airflow_env.environment(topo)["AIRFLOW_HOME"] == str(topo.airflow_home)


@pytest.mark.parametrize(("argv", "freezes"), [
    (["/x/.venv/bin/airflow", "dags", "test", "tenant_migration"], True),
    (["/x/.venv/bin/airflow", "scheduler"], False),
    (["/x/.venv/bin/airflow", "tasks", "run"], False),
])
def test_each_task_freezes_the_heap_only_under_dags_test(argv: list[str], freezes: bool, monkeypatch) -> None:
    """``airflow dags test`` runs every task in one process: each task's step starts with what
    earlier tasks left frozen (as a LocalExecutor task process starts); nowhere else."""
    from tenant_migration import runtime

    monkeypatch.setattr(prewarm, "_tasks_in_this_process", False)
    monkeypatch.setattr(prewarm.os, "register_at_fork", lambda **kw: None)
    monkeypatch.setattr("threading.Thread", lambda **kw: type("T", (), {"start": lambda self: None})())
    frozen: list[bool] = []
    monkeypatch.setattr(prewarm.gc, "freeze", lambda: frozen.append(True))
    prewarm.install(argv)
    runtime.task_starting()
    runtime.task_starting()
    assert frozen == ([True, True] if freezes else [])


def test_a_task_outside_the_local_stack_runs_no_hook(monkeypatch) -> None:
    """Without the local stack's Airflow settings the hook module is not loaded and nothing runs."""
    import sys

    from tenant_migration import runtime

    monkeypatch.delitem(sys.modules, "tenant_migration.stack.prewarm")
    frozen: list[bool] = []
    monkeypatch.setattr(prewarm.gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(prewarm, "_tasks_in_this_process", True)
    runtime.task_starting()
    assert frozen == []
