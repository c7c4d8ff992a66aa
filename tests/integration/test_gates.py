"""Gates built with Great Expectations: each passes on sound data and fails, with evidence naming
the table and the offending keys, when the data was broken on purpose."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from helpers import admin, ledger_runs

from tenant_migration import steps
from tenant_migration.spec import MigrationSpec
from tenant_migration.validation.counts import GateFailed

pytestmark = pytest.mark.integration

TENANT = 2
OTHER = 3


@pytest.fixture
def reset(topo, tiny_dataset):
    from tenant_migration.sample import platform

    platform.demo_reset(topo)


def _replayed(topo) -> None:
    from tenant_migration.sample.platform import wait_standby_caught_up

    wait_standby_caught_up(topo, timeout=60)


@pytest.fixture
def broken_source(topo, request):
    """Breaks the source on purpose (as superuser, skipping FK triggers); always repairs it."""
    kind = request.param
    reg_id = uuid.uuid4()
    with admin(topo, "primary") as p:
        device = p.execute("SELECT device_id FROM platform.devices WHERE tenant_id = %s ORDER BY device_id LIMIT 1",
                           (TENANT,)).fetchone()[0]
        if kind == "orphan":
            user = uuid.uuid4()  # no such user
        else:
            user = p.execute("SELECT user_id FROM platform.users WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()[0]
        with p.transaction():
            p.execute("SET LOCAL session_replication_role = replica")
            p.execute("INSERT INTO platform.device_registrations (registration_id, device_id, user_id, status) "
                      "VALUES (%s, %s, %s, 'active')", (reg_id, device, user))
    _replayed(topo)
    yield kind, reg_id
    with admin(topo, "primary") as p:
        p.execute("DELETE FROM platform.device_registrations WHERE registration_id = %s", (reg_id,))
    _replayed(topo)


def test_preflight_gate_passes_on_sound_data(endpoints, reset, reports) -> None:
    pre = steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT, dry_run=True), f"gate/{uuid.uuid4().hex[:8]}")
    html = Path(pre["report"]).read_text()
    assert "passed" in html and "FAIL" not in html


@pytest.mark.parametrize(
    ("broken_source", "check"),
    [
        pytest.param("orphan", "device_registrations__user_id__no_orphan", id="orphan registration"),
        pytest.param("foreign", "device_registrations__user_id__same_tenant", id="registration of another tenant's user"),
    ],
    indirect=["broken_source"],
)
def test_preflight_gate_fails_naming_table_and_row(endpoints, reset, target_admin, reports, broken_source,
                                                   check: str) -> None:
    _, reg_id = broken_source
    run_id = f"gate/{uuid.uuid4().hex[:8]}"
    with pytest.raises(steps.PreflightError, match=check) as exc:
        steps.preflight(endpoints, MigrationSpec(tenant_id=TENANT), run_id)
    assert str(reg_id) in str(exc.value)
    assert "nothing was written" in str(exc.value)
    assert ledger_runs(target_admin, run_id) == 0
    evidence = json.loads(next(reports.rglob("gate_preflight.json")).read_text())
    failed = [c for c in evidence["checks"] if not c["success"]]
    assert [c["name"] for c in failed] == [check]
    assert failed[0]["observed"] == 1


def test_final_gate_catches_a_row_of_another_tenant_on_the_target(topo, endpoints, reset, target_admin, reports) -> None:
    spec = MigrationSpec(tenant_id=TENANT)
    run_id = f"gate/{uuid.uuid4().hex[:8]}"
    steps.preflight(endpoints, spec, run_id)
    steps.detach_replica(endpoints, spec, run_id)
    try:
        steps.copy_postgres(endpoints, spec, run_id)
    finally:
        steps.reattach_replica(endpoints, spec, run_id)
    with admin(topo, "primary") as p:
        foreign = p.execute("SELECT * FROM platform.api_keys WHERE tenant_id = %s LIMIT 1", (OTHER,)).fetchone()
    with target_admin.transaction():
        target_admin.execute("SET LOCAL session_replication_role = replica")
        target_admin.execute("INSERT INTO platform.api_keys VALUES (%s, %s, %s, %s, %s, %s)", foreign)
    with pytest.raises(GateFailed, match=rf"api_keys__only_this_tenant .*observed 1, offending: {foreign[0]}"):
        steps.gate_final(endpoints, spec, run_id)
    row = target_admin.execute("SELECT passed, report_path FROM tm_control.gates WHERE run_id = %s AND gate = 'final'",
                               (run_id,)).fetchone()
    assert row[0] is False and Path(row[1]).exists()
