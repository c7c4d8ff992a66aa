"""Glue between Airflow task contexts and the library: params to spec, ledger run key,
library errors to Airflow's fail-without-retry.

Imported only inside task bodies (never at DAG parse time).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tenant_migration import alerts, task_context
from tenant_migration.endpoints import Endpoints
from tenant_migration.ledger import LedgerError
from tenant_migration.spec import InvalidParams, MigrationSpec, parse_spec
from tenant_migration.task_context import platform_label

T = TypeVar("T")

log = logging.getLogger("tenant_migration.task")

# Errors that a retry cannot fix: the task fails at once with the message, no retry.
PERMANENT: tuple[type[BaseException], ...] = (InvalidParams, LedgerError)


def _permanent_types() -> tuple[type[BaseException], ...]:
    from tenant_migration.cutover.drain import DrainNotQuiet
    from tenant_migration.flows.common import KeptForResume, PreflightError
    from tenant_migration.postgres.copy import ChecksumMismatch
    from tenant_migration.validation.counts import GateFailed

    # DrainNotQuiet: it already waited drain_max_s; a retry would wait as long again, unseen.
    return PERMANENT + (PreflightError, GateFailed, ChecksumMismatch, KeptForResume, DrainNotQuiet)


@contextmanager
def fail_fast() -> Iterator[None]:
    """Turn a permanent library error into ``AirflowFailException`` (no retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        yield
    except _permanent_types() as exc:
        raise AirflowFailException(str(exc)) from exc


def spec_of(params: dict[str, Any]) -> MigrationSpec:
    return parse_spec({k: v for k, v in params.items() if v is not None or k == "tenant_id"})


def run_key(context: dict[str, Any]) -> str:
    """The ledger's run id: the DAG run id, stable across retries and manual clears."""
    return task_context.run_key(context)


def task_starting() -> None:
    """As a task's library step begins: the local stack's runner hook (``stack/prewarm.py``,
    loaded only by that stack's Airflow local settings; under ``airflow dags test`` it freezes
    what earlier tasks left on the heap). Does nothing anywhere else."""
    prewarm = sys.modules.get("tenant_migration.stack.prewarm")
    if prewarm is not None:
        prewarm.task_starting()


def phase_of(fn: Callable[..., Any]) -> str:
    """The part of the plan a step belongs to: its module's name (``ready``, ``set``, ``go``,
    ``finish`` for the migration's steps; ``rollback``; ``rehearsal``)."""
    return fn.__module__.rsplit(".", 1)[-1]


def task_line(context: dict[str, Any], phase: str, run_id: str, slug: str | None, slug_note: str = "") -> str:
    """The one line a task's log starts with: whose migration, which platform, where in the plan."""
    params = dict(context.get("params") or {})
    ti = context.get("ti")
    task = getattr(ti, "task_id", None) or "?"
    map_index = getattr(ti, "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        task = f"{task}[{map_index}]"
    tenant = params.get("tenant_id")
    who = f"tenant {tenant if tenant is not None else '(none given)'} " + (
        f"({slug})" if slug else f"(slug not known yet{slug_note})")
    return f"{who} | platform {platform_label(params.get('platform'))} | phase {phase} | task {task} | run {run_id}"


def announce(ep: Endpoints, context: dict[str, Any], fn: Callable[..., Any], run_id: str) -> None:
    """Log ``task_line`` as the task's first line; the slug comes from the ledger (the run's
    preflight). Never fails the task: an unreachable ledger is said in the line."""
    from tenant_migration import ledger

    slug, note = None, ""
    try:
        with ep.target.connect(autocommit=True) as conn:
            slug = ledger.run_slug(conn, run_id)
    except Exception as exc:
        note = f"; the ledger on {ep.target.label} did not answer: {type(exc).__name__}"
    log.info("%s", task_line(context, phase_of(fn), run_id, slug, note))


def call(fn: Callable[..., T], context: dict[str, Any], *args: Any) -> T:
    """Run one library step with endpoints and spec resolved from the task context."""
    ep = Endpoints.from_airflow()
    announce(ep, context, fn, run_key(context))
    task_starting()
    with fail_fast():
        spec = spec_of(dict(context["params"]))
        with alerts.watch(ep, context, run_key(context)):
            return fn(ep, spec, run_key(context), *args)
