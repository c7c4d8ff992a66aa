"""Glue between Airflow task contexts and the library: params to spec, ledger run key,
library errors to Airflow's fail-without-retry.

Imported only inside task bodies (never at DAG parse time).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from tenant_migration.endpoints import Endpoints
from tenant_migration.ledger import LedgerError
from tenant_migration.spec import InvalidParams, MigrationSpec, parse_spec

T = TypeVar("T")

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
    return f"{context['dag'].dag_id}/{context['run_id']}"


def task_starting() -> None:
    """As a task's library step begins: the local stack's runner hook (``stack/prewarm.py``,
    loaded only by that stack's Airflow local settings; under ``airflow dags test`` it freezes
    what earlier tasks left on the heap). Does nothing anywhere else."""
    prewarm = sys.modules.get("tenant_migration.stack.prewarm")
    if prewarm is not None:
        prewarm.task_starting()


def call(fn: Callable[..., T], context: dict[str, Any], *args: Any) -> T:
    """Run one library step with endpoints and spec resolved from the task context."""
    task_starting()
    with fail_fast():
        spec = spec_of(dict(context["params"]))
        return fn(Endpoints.from_airflow(), spec, run_key(context), *args)
