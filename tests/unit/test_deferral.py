"""A wait handed to the triggerer: past moments return at once, near ones sleep, far ones defer
the task to a trigger that ends it at the very moment the ledger named."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk.exceptions import TaskDeferred

from tenant_migration import deferral


def test_nothing_to_wait_for_returns_what_it_was_given() -> None:
    assert deferral.until({"waited_s": 0}) == {"waited_s": 0}
    past = {"wait_until": (datetime.now(UTC) - timedelta(seconds=3)).isoformat()}
    assert deferral.until(past) is past


def test_a_near_moment_is_slept_through() -> None:
    started = time.monotonic()
    out = {"wait_until": (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()}
    assert deferral.until(out) is out
    assert time.monotonic() - started >= 0.25


def test_a_far_moment_defers_to_a_trigger_that_resumes_the_task_then() -> None:
    moment = datetime.now(UTC) + timedelta(seconds=deferral.MIN_DEFER_S + 60)
    with pytest.raises(TaskDeferred) as raised:
        deferral.until({"wait_until": moment.isoformat()})
    trigger = raised.value.trigger
    assert isinstance(trigger, DateTimeTrigger)
    assert trigger.moment == moment  # the ledger's deadline, not "now + what is left"
    assert raised.value.method_name == deferral.RESUME


def test_a_resumable_task_is_run_again_when_resumed() -> None:
    from airflow.sdk import DAG, task

    calls = []

    with DAG("resumable_probe", schedule=None):
        @task
        def waits() -> str:
            calls.append(1)
            return "done"

        out = deferral.resumable(waits())
    op = out.operator
    assert type(op).__name__ == "_PythonDecoratedOperator" and hasattr(op, deferral.RESUME)
    assert op.resume_execution(deferral.RESUME, {"event": "2026-12-08T00:00:00+00:00"}, {}) == "done"
    assert calls == [1]
