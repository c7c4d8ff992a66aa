"""Registration suspension against the real platform: the platform itself refuses registrations
while suspended and accepts them again when resumed or when the expiry (dead-man switch) passes."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg
import pytest

from tenant_migration.cutover import registrations
from tenant_migration.sample import profile as sample_profile

pytestmark = pytest.mark.integration
SWITCH = sample_profile().registrations

TENANT = 6


def _register_user(app: psycopg.Connection, tenant_id: int) -> None:
    uid = uuid.uuid4()
    app.execute("INSERT INTO platform.users (user_id, tenant_id, email, display_name, role) "
                "VALUES (%s, %s, %s, 'probe', 'viewer')", (uid, tenant_id, f"probe-{uid}@example.test"))


@pytest.fixture
def conns(endpoints, tiny_dataset):
    with endpoints.source_operator.connect(autocommit=True) as op, endpoints.source_primary.connect(autocommit=True) as app:
        yield op, app
        registrations.resume(op, SWITCH, TENANT)
        app.execute("DELETE FROM platform.users WHERE email LIKE 'probe-%%@example.test'")


def test_suspended_tenant_refuses_registrations_until_resumed(conns) -> None:
    op, app = conns
    window = registrations.suspend(op, SWITCH, TENANT, timedelta(minutes=10), "test")
    assert window.active
    with pytest.raises(psycopg.errors.RaiseException, match=f"registrations are suspended for tenant {TENANT}"):
        _register_user(app, TENANT)
    _register_user(app, TENANT + 1)  # other tenants are not affected
    assert not registrations.resume(op, SWITCH, TENANT).active
    _register_user(app, TENANT)


def test_expiry_reopens_registrations_without_anyone_resuming(conns) -> None:
    op, app = conns
    registrations.suspend(op, SWITCH, TENANT, timedelta(seconds=2), "dead-man switch test")
    with pytest.raises(psycopg.errors.RaiseException):
        _register_user(app, TENANT)
    time.sleep(2.5)
    assert not registrations.status(op, SWITCH, TENANT).active
    _register_user(app, TENANT)


def test_suspend_twice_keeps_the_later_expiry(conns) -> None:
    op, _ = conns
    first = registrations.suspend(op, SWITCH, TENANT, timedelta(minutes=30), "a")
    second = registrations.suspend(op, SWITCH, TENANT, timedelta(minutes=5), "b")
    assert second.suspended_until == first.suspended_until


def test_operator_role_can_change_nothing_but_the_flag(endpoints, tiny_dataset) -> None:
    with endpoints.source_operator.connect(autocommit=True) as op:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            op.execute("UPDATE platform.tenant_settings SET data_retention_days = 1 WHERE tenant_id = %s", (TENANT,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            op.execute("DELETE FROM platform.users WHERE tenant_id = %s", (TENANT,))


def test_suspension_needs_an_expiry(conns) -> None:
    op, _ = conns
    with pytest.raises(registrations.RegistrationError, match="positive expiry"):
        registrations.suspend(op, SWITCH, TENANT, timedelta(0), "no expiry")
