"""Warm imports for the local stack's LocalExecutor: every task process starts with the Task SDK's
runner, the DAG files' operator modules and the task path's drivers already imported.

Why: under ``airflow standalone`` a LocalExecutor worker is forked from the scheduler, and each task
instance is forked from a worker (no exec). Whatever the scheduler imported before it forked its
workers, every task process inherits for free; whatever it did not, each task imports again: the
task runner and the SDK, the DAG file's operators while re-parsing it, psycopg and the Cassandra
driver. On 2 shared cores that was 2-7 s of each copy task's fixed cost
(``bench/bench_airflow_overhead.py --standalone``), paid again by every mapped task.

How: ``airflow_env.write_files`` puts an ``airflow_local_settings.py`` in ``$AIRFLOW_HOME/config``
(Airflow's own hook, imported by every Airflow process while ``import airflow`` initialises) that
calls ``install()``. Only in ``airflow scheduler`` does that register a fork hook; the imports run
at its first fork (the executor starting its workers), when Airflow is fully initialised.
``airflow dags test`` runs tasks in-process: there only Great Expectations (``CALLS``) is imported,
in a background thread, once Airflow has initialised, while the CLI parses the DAG and creates the
run (ADR 5, amendment 3). No other process imports anything more: the dag-processor still parses
DAG files with nothing pre-imported (parse-time purity is measured there). Nothing is connected or
executed: modules are imported, no more.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import time

# The task runner, the DAG files' operators, the library's task path and its drivers.
MODULES = (
    "airflow.sdk.execution_time.supervisor",  # a worker imports it at its first task
    "airflow.sdk.execution_time.task_runner",
    "airflow.providers.standard.operators.hitl",
    "airflow.providers.standard.operators.empty",
    "airflow.providers.standard.decorators.python",
    "psycopg",
    "cassandra.cluster",
    "tenant_migration.runtime",
    "tenant_migration.steps",
)
# Then, called: Great Expectations, imported the way the gates import it (scipy and altair
# deferred, ADR 5). Each gate task paid it otherwise: 2.1-2.5 s of every gate's time under
# standalone on a calm machine, more on a loaded one. Then one scratch Data Docs site, built in a
# temporary folder and removed: the gates' own expectations registered and GX's ~60 page templates
# compiled (``gx_gate._SharedTemplates``), 0.2 s of every gate's docs build otherwise.
CALLS = ("tenant_migration.validation.gx_gate:import_gx", "tenant_migration.validation.gx_gate:prewarm_data_docs")

_warmed = False
# Set in ``airflow dags test``, which runs every task in its own process (``task_starting``).
_tasks_in_this_process = False


def is_scheduler(argv: list[str] | None = None) -> bool:
    """True in the ``airflow scheduler`` process (standalone starts it as ``airflow scheduler``)."""
    argv = sys.argv if argv is None else argv
    return len(argv) > 1 and os.path.basename(argv[0]) == "airflow" and argv[1] == "scheduler"


def warm() -> list[str]:
    """Import ``MODULES`` and run ``CALLS`` once; return those that failed (a missing one costs
    only the warm-up)."""
    global _warmed
    if _warmed:
        return []
    _warmed = True
    started = time.monotonic()
    failed = []
    for name in MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a warm-up must never stop the scheduler
            failed.append(name)
    failed += _run_calls()
    logging.getLogger(__name__).info("task imports warmed for LocalExecutor workers in %.1f s (failed: %s)",
                                     time.monotonic() - started, failed or "none")
    return failed


def _run_calls() -> list[str]:
    """Run ``CALLS``; return those that failed (never raises)."""
    failed = []
    for call in CALLS:
        module, _, function = call.partition(":")
        try:
            getattr(importlib.import_module(module), function)()
        except Exception:
            failed.append(call)
    return failed


def is_dags_test(argv: list[str] | None = None) -> bool:
    """True in ``airflow dags test`` (``make demo``): it runs every task in its own process."""
    argv = sys.argv if argv is None else argv
    return len(argv) > 2 and os.path.basename(argv[0]) == "airflow" and argv[1:3] == ["dags", "test"]


def _warm_calls_after_airflow() -> None:
    # Importing ``airflow`` blocks until the main thread has finished initialising it (the module
    # lock is held meanwhile): this thread imports nothing else while Airflow starts up.
    importlib.import_module("airflow")
    started = time.monotonic()
    failed = _run_calls()  # a failed one: the gate that needs it imports it again and raises there
    # What is imported by now lives as long as the process: out of the collector's way, as the
    # LocalExecutor does before it forks its workers. With Airflow, GX and pandas loaded the
    # heap holds ~1 M objects, and each full collection walked them all: 0.46 s, landing in
    # whichever task allocated at that moment (a gate's JSON parse, a copy's rows).
    gc.freeze()
    logging.getLogger(__name__).info("great_expectations warmed for the in-process tasks in %.1f s (failed: %s)",
                                     time.monotonic() - started, failed or "none")


def task_starting() -> None:
    """Called as each task's library step begins (``runtime.call``). Under ``airflow dags test``
    what earlier tasks left on the heap is moved out of the collector's way, as a LocalExecutor task
    process starts: forked from a worker whose heap is frozen, its collector walks only the task's
    own objects. In one ``dags test`` process it walked everything every earlier task left: full
    collections of 0.2-0.3 s every ~2 s (demo run, ``gc.callbacks``), landing in whichever step
    allocated -- a 0.31 s pause made a 0.35 s catch-up gate 0.71 s; with this, 12-30 ms. Nothing is
    collected first (that is a full collection per task): the little garbage pending then stays
    for the process's life, a demo run's. Elsewhere it does nothing."""
    if _tasks_in_this_process:
        gc.freeze()


def install(argv: list[str] | None = None) -> bool:
    """In the scheduler, warm the imports just before its first fork. In ``airflow dags test``,
    which runs the DAG's tasks in its own process, import ``CALLS`` (Great Expectations) in a
    background thread while Airflow parses the DAG and creates the run, as the scheduler does for
    its workers: the gates then cost the same under ``make demo`` as under the LocalExecutor.
    Elsewhere do nothing."""
    if is_scheduler(argv):
        os.register_at_fork(before=warm)
        return True
    if is_dags_test(argv):
        import threading

        global _tasks_in_this_process
        _tasks_in_this_process = True
        threading.Thread(target=_warm_calls_after_airflow, name="gx-warm-up", daemon=True).start()
        return True
    return False


LOCAL_SETTINGS = '''"""Airflow local settings of the tenant_migration local stack (generated by
tenant_migration.stack.airflow_env.write_files; see tenant_migration/stack/prewarm.py)."""

from tenant_migration.stack import prewarm

prewarm.install()

__all__: list[str] = []  # nothing here overrides airflow.settings
'''
