"""Suspending a tenant's new user and device registrations for the critical window.

Design note: rather than engineer around registrations that arrive mid-cutover, the platform
refuses them for the window. The suspension carries an expiry that the *platform itself* enforces:
once it passes, registrations succeed again even if nobody resumes them: a dead-man switch that
holds if Airflow dies. How a platform switches them is its profile's ``registrations``
(``profile.SqlSwitch``: status / suspend / resume statements on a named connection); the flow
resumes them on every side that may take traffic (the shared source and, once flipped, the
tenant's target).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration.profile import SqlSwitch


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


def status(conn: psycopg.Connection, switch: SqlSwitch, tenant_id: int) -> Suspension:
    """The switch's state for the tenant, as the platform sees it now (its own clock)."""
    cur = conn.execute(sql.SQL(switch.status), {"tenant_id": tenant_id})  # type: ignore[arg-type]
    row = cur.fetchone()
    if row is None:
        raise RegistrationError(f"registrations.status returned no row for tenant {tenant_id}")
    cols = [c.name for c in cur.description or []]
    values = dict(zip(cols, row, strict=True))
    missing = sorted({"enabled", "suspended_until", "reason"} - set(values))
    if missing:
        raise RegistrationError(f"registrations.status must return the columns enabled, suspended_until and reason; "
                                f"missing {missing}")
    now = conn.execute("SELECT clock_timestamp()").fetchone()
    assert now is not None
    return Suspension(tenant_id, bool(values["enabled"]), values["suspended_until"], values["reason"], now[0])


def suspend(conn: psycopg.Connection, switch: SqlSwitch, tenant_id: int, expires_in: timedelta,
            reason: str) -> Suspension:
    """Refuse registrations until now + ``expires_in``. Idempotent: a repeat keeps the later expiry."""
    if expires_in <= timedelta(0):
        raise RegistrationError("a suspension needs a positive expiry (the dead-man switch)")
    with conn.transaction():
        updated = conn.execute(sql.SQL(switch.suspend),  # type: ignore[arg-type]
                               {"tenant_id": tenant_id, "expires_in": expires_in, "reason": reason}).rowcount
    if updated < 1:
        raise RegistrationError(f"registrations.suspend changed no row for tenant {tenant_id}")
    return status(conn, switch, tenant_id)


def resume(conn: psycopg.Connection, switch: SqlSwitch, tenant_id: int) -> Suspension:
    """Accept registrations again. Idempotent."""
    with conn.transaction():
        conn.execute(sql.SQL(switch.resume), {"tenant_id": tenant_id})  # type: ignore[arg-type]
    return status(conn, switch, tenant_id)
