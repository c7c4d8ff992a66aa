"""Suspending a tenant's new user and device registrations for the critical window.

Design note: rather than engineer around registrations that arrive mid-cutover, the platform
refuses them for the window (``platform.check_registrations_open`` trigger). The suspension carries
an expiry that the *platform itself* enforces: once ``registrations_suspended_until`` passes,
registrations succeed again even if nobody resumes them: a dead-man switch that holds if Airflow
dies. ``resume`` clears the flag on every side that may take traffic (the shared source and, once
flipped, the tenant's target).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg


class RegistrationError(RuntimeError):
    """The registrations flag cannot be changed as asked."""


@dataclass(frozen=True)
class Suspension:
    tenant_id: int
    enabled: bool
    suspended_until: datetime | None
    reason: str | None
    now: datetime

    @property
    def active(self) -> bool:
        """Registrations are refused right now (flag off and expiry not passed)."""
        return not self.enabled and (self.suspended_until is None or self.suspended_until > self.now)

    def to_dict(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "enabled": self.enabled, "active": self.active,
                "suspended_until": self.suspended_until.isoformat() if self.suspended_until else None,
                "reason": self.reason, "observed_at": self.now.isoformat()}


def status(conn: psycopg.Connection, tenant_id: int) -> Suspension:
    row = conn.execute(
        "SELECT registrations_enabled, registrations_suspended_until, suspension_reason, clock_timestamp() "
        "FROM platform.tenant_settings WHERE tenant_id = %s",
        (tenant_id,),
    ).fetchone()
    if row is None:
        raise RegistrationError(f"tenant {tenant_id} has no tenant_settings row")
    return Suspension(tenant_id, bool(row[0]), row[1], row[2], row[3])


def suspend(conn: psycopg.Connection, tenant_id: int, expires_in: timedelta, reason: str) -> Suspension:
    """Refuse registrations until now + ``expires_in``. Idempotent: a repeat keeps the later expiry."""
    if expires_in <= timedelta(0):
        raise RegistrationError("a suspension needs a positive expiry (the dead-man switch)")
    with conn.transaction():
        updated = conn.execute(
            "UPDATE platform.tenant_settings SET registrations_enabled = false, "
            "registrations_suspended_until = GREATEST(CASE WHEN registrations_enabled THEN NULL "
            "ELSE registrations_suspended_until END, clock_timestamp() + %s), suspension_reason = %s "
            "WHERE tenant_id = %s",
            (expires_in, reason, tenant_id),
        ).rowcount
    if updated != 1:
        raise RegistrationError(f"tenant {tenant_id} has no tenant_settings row")
    return status(conn, tenant_id)


def resume(conn: psycopg.Connection, tenant_id: int) -> Suspension:
    """Accept registrations again. Idempotent."""
    with conn.transaction():
        conn.execute(
            "UPDATE platform.tenant_settings SET registrations_enabled = true, "
            "registrations_suspended_until = NULL, suspension_reason = NULL "
            "WHERE tenant_id = %s AND NOT registrations_enabled",
            (tenant_id,),
        )
    return status(conn, tenant_id)
