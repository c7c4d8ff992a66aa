"""Teardowns keep the run's replica snapshot and change stream while a failed run can be resumed
(ADR 7): the decision, against the real ledger on the target."""

from __future__ import annotations

import uuid

import pytest

from tenant_migration import ledger, steps
from tenant_migration.abort import abort_run

pytestmark = pytest.mark.integration

TENANT = 990_006  # no such tenant in the sample data: the one-live-run-per-tenant rule stays local


@pytest.fixture
def run_id(endpoints, tiny_dataset):
    rid = f"test_keep/{uuid.uuid4()}"
    with endpoints.target.connect(autocommit=True) as conn:
        ledger.ensure_schema(conn)
        conn.execute("UPDATE tm_control.runs SET status = 'aborted' WHERE tenant_id = %s AND status = 'running'",
                     (TENANT,))
    yield rid
    with endpoints.target.connect(autocommit=True) as conn:
        conn.execute("DELETE FROM tm_control.runs WHERE run_id = %s", (rid,))


def _gate(endpoints, run_id: str, gate: str, passed: bool) -> None:
    with endpoints.target.connect(autocommit=True) as conn:
        ledger.record_gate(conn, run_id, gate, passed, "test", {}, None)


@pytest.mark.parametrize("gate", ["post_copy", "post_flip"])
def test_kept_while_live_and_gate_not_passed_released_after(endpoints, run_id, gate) -> None:
    steps.hold_for_resume(endpoints, run_id, gate, "thing")  # not in the ledger (dry run, refused): release
    with endpoints.target.connect(autocommit=True) as conn:
        ledger.start_run(conn, run_id, TENANT, "fp", {})
    with pytest.raises(steps.KeptForResume, match="clear the failed task instances"):
        steps.hold_for_resume(endpoints, run_id, gate, "thing")
    _gate(endpoints, run_id, gate, False)
    with pytest.raises(steps.KeptForResume):
        steps.hold_for_resume(endpoints, run_id, gate, "thing")
    _gate(endpoints, run_id, gate, True)  # the latest attempt counts
    steps.hold_for_resume(endpoints, run_id, gate, "thing")
    with endpoints.target.connect(autocommit=True) as conn:
        kept = conn.execute("SELECT count(*) FROM tm_control.events WHERE run_id = %s AND step = 'keep_thing'",
                            (run_id,)).fetchone()[0]
    assert kept == 2


def test_abort_releases(endpoints, run_id) -> None:
    with endpoints.target.connect(autocommit=True) as conn:
        ledger.start_run(conn, run_id, TENANT, "fp", {})
    with pytest.raises(steps.KeptForResume):
        steps.hold_for_resume(endpoints, run_id, "post_flip", "slot")
    assert abort_run(endpoints, run_id) == "running"
    steps.hold_for_resume(endpoints, run_id, "post_flip", "slot")
    assert abort_run(endpoints, run_id) == "aborted"  # a second abort changes nothing
