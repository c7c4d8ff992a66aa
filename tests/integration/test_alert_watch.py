"""The run's watch (``alerts.watch``) on the real ledger, sending to a local webhook receiver:
registrations suspended with a quarter of the window left, and a run over its time budget, each
alerted once per run (however many tasks look), and nothing for a resumed suspension or a run
within its budget."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import alert_receiver

from tenant_migration import alerts, ledger

pytestmark = pytest.mark.integration

TENANT = 4242  # no tenant of the dataset: the ledger run is the test's own
SECRET = "watch-secret-Q1"


@pytest.fixture
def receiver(monkeypatch) -> Any:
    with alert_receiver(monkeypatch, SECRET) as r:
        monkeypatch.setattr(alerts, "_who", lambda context: (TENANT, "watch-test", "sample"))
        yield r


@pytest.fixture
def live_run(target_admin) -> Any:
    run_id = f"tenant_migration/watch-{uuid.uuid4().hex[:8]}"
    ledger.ensure_schema(target_admin)
    ledger.start_run(target_admin, run_id, TENANT, "watch-test", {"tenant_id": TENANT})
    try:
        yield run_id
    finally:
        ledger.finish_run(target_admin, run_id, "aborted")


def _context(run_id: str, budget: int) -> dict[str, Any]:
    dag_id, dag_run = run_id.split("/", 1)
    return {"dag": SimpleNamespace(dag_id=dag_id), "run_id": dag_run, "params": {"tenant_id": TENANT,
            "time_budget_minutes": budget}, "ti": SimpleNamespace(task_id="go.flip_dns", map_index=-1)}


def test_a_suspension_nearing_expiry_and_a_run_over_budget_page_once(endpoints, target_admin, live_run,
                                                                    receiver) -> None:
    now = datetime.now(UTC)
    ctx = _context(live_run, budget=60)
    assert alerts.check(endpoints, ctx, live_run, 60) == []  # a fresh run, nothing suspended: quiet
    # Suspended 50 s ago for 60 s: 10 s left, under a quarter of the window.
    ledger.record_event(target_admin, live_run, "registrations_suspended", "info",
                        {"suspended_until": (now + timedelta(seconds=10)).isoformat()}, at=now - timedelta(seconds=50))
    target_admin.execute("UPDATE tm_control.runs SET started_at = %s WHERE run_id = %s",
                         (now - timedelta(minutes=75), live_run))
    target_admin.commit()
    with alerts.watch(endpoints, ctx, live_run, every=0.2):
        time.sleep(1.0)  # several looks, by several "tasks"
    alerts.check(endpoints, ctx, live_run, 60)
    got = {a["kind"]: a for a in receiver.alerts()}
    assert sorted(a["kind"] for a in receiver.alerts()) == ["over_budget", "suspension_expiring"]
    assert got["over_budget"]["text"].startswith(
        f"[over_budget] tenant {TENANT} (watch-test) | platform sample | run {live_run} | task go.flip_dns: "
        "the run has been going 75 min, over its time budget of 60 min (param time_budget_minutes)")
    sus = got["suspension_expiring"]["reason"]
    assert "the suspension expires in " in sus and "the platform takes new registrations again by itself" in sus
    assert got["suspension_expiring"]["runbook"].startswith("`flip_dns` -> by hand only")
    recorded = target_admin.execute("SELECT detail->>'kind' FROM tm_control.events WHERE run_id = %s AND "
                                    "step = 'alert' ORDER BY event_id", (live_run,)).fetchall()
    assert recorded == [("over_budget",), ("suspension_expiring",)]


def test_a_resumed_suspension_and_a_run_within_budget_stay_quiet(endpoints, target_admin, live_run,
                                                                 receiver) -> None:
    now = datetime.now(UTC)
    ledger.record_event(target_admin, live_run, "registrations_suspended", "info",
                        {"suspended_until": (now + timedelta(seconds=5)).isoformat()}, at=now - timedelta(seconds=55))
    ledger.record_event(target_admin, live_run, "registrations_resumed", "info", {})
    assert alerts.check(endpoints, _context(live_run, 600), live_run, 600) == []
    assert alerts.check(endpoints, _context(live_run, 0), live_run, 0) == []  # 0: no budget
    assert receiver.received == []


def test_an_alert_the_receiver_refused_is_tried_again_at_the_next_look(endpoints, target_admin, live_run,
                                                                       receiver) -> None:
    target_admin.execute("UPDATE tm_control.runs SET started_at = now() - interval '2 hours' WHERE run_id = %s",
                         (live_run,))
    target_admin.commit()
    receiver.status = 400
    (out,) = alerts.check(endpoints, _context(live_run, 60), live_run, 60)
    assert out.startswith("alert not sent (over_budget)")
    receiver.status = 204
    (out,) = alerts.check(endpoints, _context(live_run, 60), live_run, 60)
    assert out.startswith("alert sent (over_budget)")
    assert alerts.check(endpoints, _context(live_run, 60), live_run, 60) == []
