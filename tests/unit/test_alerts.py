"""Alerts (``alerts``): what a message says (tenant, task, reason in one line, the runbook's row),
that it is signed and holds no secret, which kind a failure is, and that a receiver that is
missing, refusing or down is said in the log and never raised. A real DAG run sending them to a
receiver is ``tests/e2e/test_operator_alerts.py``; the ledger's watch is
``tests/integration/test_alert_watch.py``."""

from __future__ import annotations

import hashlib
import hmac
import json
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import alert_receiver

from tenant_migration import alerts
from tenant_migration.flows.common import KeptForResume
from tenant_migration.validation.counts import GateFailed

SECRET = "hook-secret-Xy7"


@pytest.fixture
def receiver(monkeypatch) -> Any:
    with alert_receiver(monkeypatch, SECRET) as r:
        yield r


def _alert(**kw: Any) -> alerts.Alert:
    base = {"kind": "gate_failed", "tenant_id": 3, "slug": "acme", "platform": "sample", "dag_id": "tenant_migration",
            "run_id": "manual__1", "task": "ready.gate_post_copy", "reason": "gate post_copy failed: 1 of 9 checks",
            "runbook": "`preflight`, gates -> yes"}
    return alerts.Alert(**{**base, **kw})


def test_secrets_in_an_error_are_masked_and_the_reason_is_one_line() -> None:
    text = ("connection to postgresql://migration_writer:s3cr3t@10.0.0.5:5432/platform failed\n"
            "  password=hunter2 sslmode=require\n")
    assert alerts.one_line(text) == "connection to postgresql://***@10.0.0.5:5432/platform failed"
    assert alerts.redact("password=hunter2 token: abc 'x'") == "password=*** token: *** 'x'"
    assert alerts.one_line("\n\n  first real line  \nsecond") == "first real line"
    assert len(alerts.one_line("x" * 1000)) == 300


def test_which_kind_a_failure_is() -> None:
    def wrapped(inner: BaseException) -> BaseException:
        try:
            try:
                raise inner
            except Exception as exc:
                raise RuntimeError(str(exc)) from exc
        except RuntimeError as outer:
            return outer

    assert alerts.kind_of("ready.copy_postgres_batch", wrapped(ValueError("x"))) == "task_failed"
    assert alerts.kind_of("set.load_check", wrapped(GateFailed("p99 over"))) == "gate_failed"
    assert alerts.kind_of("ready.gate_post_copy", None) == "gate_failed"
    assert alerts.kind_of("ready.reattach_replica", wrapped(KeptForResume("kept"))) == "held"


@pytest.mark.parametrize(("dag", "task", "reason", "starts"), [
    ("tenant_migration", "ready.copy_cassandra_batch", "", "`copy_*_batch` -> yes | backfill"),
    ("tenant_migration", "ready.gate_post_copy", "gate post_copy failed", "`preflight`, gates, `load_check` -> yes"),
    ("tenant_migration", "go.drain_stragglers", "the tenant's writes still reach the shared platform 900s after",
     "Drain never quiet: `drain_stragglers` red"),
    ("tenant_migration", "go.drain_stragglers", "connection refused", "`catch_up_*`, `final_catch_up`, `drain_stragglers`"),
    ("tenant_rollback", "check_rollback", "", "`check_rollback` -> yes"),
    ("tenant_rehearsal", "migrate.ready.copy_postgres_batch", "", "`copy_*_batch` -> yes"),
])
def test_the_runbook_row_for_the_task(dag: str, task: str, reason: str, starts: str) -> None:
    assert alerts.runbook_row(dag, task, reason).startswith(starts)


def test_a_task_the_runbook_does_not_name_says_where_to_look() -> None:
    assert alerts.runbook_row("tenant_migration", "no_such_task") == \
        "tenant_migration runbook (Docs tab): no row names no_such_task"


def test_an_alert_is_signed_and_names_tenant_task_reason_and_runbook(receiver) -> None:
    out = alerts.send(_alert())
    assert out.startswith("alert sent (gate_failed) to http://127.0.0.1:")
    (got,) = receiver.received
    assert got["path"] == "/hooks/migration"
    want = "sha256=" + hmac.new(SECRET.encode(), got["body"], hashlib.sha256).hexdigest()
    assert got["headers"][alerts.SIGNATURE_HEADER] == want
    body = json.loads(got["body"])
    assert body["text"] == ("[gate_failed] tenant 3 (acme) | platform sample | run tenant_migration/manual__1 | "
                            "task ready.gate_post_copy: gate post_copy failed: 1 of 9 checks | runbook: "
                            "`preflight`, gates -> yes")
    assert SECRET not in got["body"].decode() and SECRET not in out


def test_a_message_that_would_carry_the_secret_is_not_sent(receiver) -> None:
    out = alerts.send(_alert(reason=f"bad token {SECRET}"))
    assert out == "alert not sent (gate_failed): the message would carry the signing secret"
    assert not receiver.received


def test_a_refusing_or_absent_receiver_is_said(receiver, monkeypatch) -> None:
    receiver.status = 403
    assert alerts.send(_alert()).endswith("/hooks/migration answered HTTP 403")
    assert len(receiver.received) == 1  # a 4xx is not retried
    receiver.status = 503
    assert alerts.send(_alert(), timeout=2).endswith("answered HTTP 503")
    assert len(receiver.received) == 4  # a 5xx is, three times in all
    from airflow.sdk import BaseHook

    def missing(cls, conn_id):
        raise LookupError(conn_id)

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(missing))
    assert alerts.send(_alert()) == "alert not sent (gate_failed): no Airflow connection 'tm_alerts' (LookupError)"


def test_the_notifier_sends_on_a_failed_task_and_never_raises(receiver, monkeypatch, caplog) -> None:
    monkeypatch.setattr(alerts, "_who", lambda context: (3, "acme", "sample"))
    try:
        raise RuntimeError("copy failed") from GateFailed("gate post_copy failed: table devices differs\nmore lines")
    except RuntimeError as exc:
        error = exc
    context = {"dag": SimpleNamespace(dag_id="tenant_migration"), "run_id": "manual__1",
               "ti": SimpleNamespace(task_id="ready.copy_postgres_batch", map_index=2), "exception": error,
               "params": {"tenant_id": 3}}
    alerts.WebhookNotifier().notify(context)
    (body,) = receiver.alerts()
    assert body["kind"] == "gate_failed" and body["task"] == "ready.copy_postgres_batch[2]"
    assert body["reason"] == "copy failed" and body["runbook"].startswith("`copy_*_batch`")
    assert body["url"].endswith("/dags/tenant_migration/runs/manual__1/tasks/ready.copy_postgres_batch/mapped/2")
    assert body["evidence"] == "" and body["text"].endswith("| open: " + body["url"])
    receiver.status = 500
    alerts.WebhookNotifier().notify(context)  # logged, not raised
    assert "alert not sent (gate_failed)" in caplog.text
