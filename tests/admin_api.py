"""The platform admin API of the HTTP registration switch's tests: meterhub's own server
(``tenant_migration.sample.meterhub.admin_api``), started by the test in its own process, in memory:
a real HTTP server on loopback that keeps each tenant's flag, enforces its own expiry, requires
basic auth, records every call, and can answer 500 or hold its answers on purpose."""

from __future__ import annotations

from tenant_migration.sample.meterhub.admin_api import AdminApi, Call

USER, PASSWORD = AdminApi.user, AdminApi.password
__all__ = ["PASSWORD", "SWITCH", "USER", "AdminApi", "Call"]


# The profile section of a platform whose switch is this API.
SWITCH = {
    "kind": "http",
    "connection": "tm_admin_api",
    "timeout_s": 1.0,
    "retries": 2,
    "status": {"method": "GET", "path": "/tenants/{tenant_id}/registrations"},
    "suspend": {"method": "POST", "path": "/tenants/{tenant_id}/registrations/suspend",
                "body": {"expires_in_s": "{expires_in_s}", "reason": "{reason}"}, "expect": [204]},
    "resume": {"method": "POST", "path": "/tenants/{tenant_id}/registrations/resume", "expect": [204]},
    "answer": {"enabled": "data.open", "suspended_until": "data.closed_until", "reason": "data.why"},
}
