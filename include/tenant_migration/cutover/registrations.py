"""Suspending a tenant's new user and device registrations for the critical window.

Design note: rather than engineer around registrations that arrive mid-cutover, the platform
refuses them for the window. The suspension carries an expiry that the *platform itself* enforces:
once it passes, registrations succeed again even if nobody resumes them: a dead-man switch that
holds if Airflow dies. How a platform switches them is its profile's ``registrations``: SQL
statements on a named connection (``profile.SqlSwitch``) or calls of its admin API
(``profile.HttpSwitch``). The flows see one ``Side`` per connection (``side``); they resume
registrations on every side that may take traffic (the shared source and, once flipped, the
tenant's target).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol

import psycopg
from psycopg import sql

from tenant_migration.profile import HttpCall, HttpSwitch, SqlSwitch

if TYPE_CHECKING:
    from tenant_migration.endpoints import Endpoints, HttpEndpoint


class RegistrationError(RuntimeError):
    """The registrations flag cannot be changed as asked."""


class NotOnThisSide(RegistrationError):
    """This side holds no registration flag for the tenant (its rows never reached it)."""


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


# ---------------------------------------------------------------------------------------------
# One side of the switch, whatever its kind


class Side(Protocol):
    label: str

    def status(self, tenant_id: int) -> Suspension: ...
    def suspend(self, tenant_id: int, expires_in: timedelta, reason: str) -> Suspension: ...
    def resume(self, tenant_id: int) -> Suspension: ...


class SqlSide:
    def __init__(self, conn: psycopg.Connection, switch: SqlSwitch, label: str) -> None:
        self.conn, self.switch, self.label = conn, switch, label

    def _call(self, fn: Any, *args: Any) -> Suspension:
        try:
            return fn(self.conn, self.switch, *args)  # type: ignore[no-any-return]
        except psycopg.errors.UndefinedTable as exc:
            raise NotOnThisSide(f"registrations on {self.label}: UndefinedTable: {str(exc).splitlines()[0]}") from None
        except RegistrationError as exc:
            if "returned no row" in str(exc):
                raise NotOnThisSide(f"{exc} on {self.label}") from None
            raise

    def status(self, tenant_id: int) -> Suspension:
        return self._call(status, tenant_id)

    def suspend(self, tenant_id: int, expires_in: timedelta, reason: str) -> Suspension:
        return self._call(suspend, tenant_id, expires_in, reason)

    def resume(self, tenant_id: int) -> Suspension:
        return self._call(resume, tenant_id)


_RETRIED = (500, 502, 503, 504)


class HttpSide:
    """The admin API through a ``requests`` session: connect and read timeouts, retries with
    backoff on connection errors and 5xx answers (urllib3's ``Retry``), basic auth or headers
    from the connection. Errors name the call, the URL path and the answer, never the credentials."""

    def __init__(self, api: HttpEndpoint, switch: HttpSwitch, label: str) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.api, self.switch, self.label = api, switch, label
        self.session = requests.Session()
        retry = Retry(total=switch.retries, connect=switch.retries, read=switch.retries, status=switch.retries,
                      backoff_factor=0.2, status_forcelist=_RETRIED, allowed_methods=None,
                      raise_on_status=False)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if api.login is not None:
            self.session.auth = (api.login, api.password or "")
        self.session.headers.update(dict(api.headers))

    def close(self) -> None:
        self.session.close()

    def _call(self, name: str, call: HttpCall, values: dict[str, Any]) -> Any:
        import requests

        path = call.path.format(**values)
        body = _render(call.body, values) if call.body is not None else None
        try:
            resp = self.session.request(call.method, self.api.base_url + path, json=body,
                                        timeout=(self.switch.timeout_s, self.switch.timeout_s))
        except requests.exceptions.RequestException as exc:
            where = f"registrations.{name} {call.method} {path} on {self.label}"
            if _timed_out(exc):
                raise RegistrationError(f"{where}: no answer within {self.switch.timeout_s:g} s "
                                        f"({self.switch.retries} retries)") from None
            raise RegistrationError(f"{where}: {type(exc).__name__}: {_reason(exc)} "
                                    f"({self.switch.retries} retries)") from None
        if resp.status_code in self.switch.not_found:
            raise NotOnThisSide(f"registrations.{name} {call.method} {path} on {self.label}: {resp.status_code}")
        if resp.status_code not in call.expect:
            retried = f" after {self.switch.retries} retries" if resp.status_code in _RETRIED else ""
            raise RegistrationError(f"registrations.{name} {call.method} {path} on {self.label}: answered "
                                    f"{resp.status_code}{retried} (expected {call.expect}): {resp.text[:200]!r}")
        return resp

    def status(self, tenant_id: int) -> Suspension:
        resp = self._call("status", self.switch.status, {"tenant_id": tenant_id})
        try:
            doc = resp.json()
        except ValueError:
            raise RegistrationError(f"registrations.status on {self.label}: the answer is not JSON: "
                                    f"{resp.text[:200]!r}") from None
        a = self.switch.answer
        enabled, until, reason = (_dig(doc, a.enabled, self.label), _dig(doc, a.suspended_until, self.label),
                                  _dig(doc, a.reason, self.label))
        if not isinstance(enabled, bool):
            raise RegistrationError(f"registrations.answer.enabled: {a.enabled!r} on {self.label} is {enabled!r}, "
                                    f"not true or false")
        now = _server_time(resp.headers.get("Date"))
        return Suspension(tenant_id, enabled, _when(until, self.label), None if reason is None else str(reason), now)

    def suspend(self, tenant_id: int, expires_in: timedelta, reason: str) -> Suspension:
        if expires_in <= timedelta(0):
            raise RegistrationError("a suspension needs a positive expiry (the dead-man switch)")
        until = datetime.now(UTC) + expires_in
        self._call("suspend", self.switch.suspend, {"tenant_id": tenant_id, "reason": reason, "until": until.isoformat(),
                                                    "expires_in_s": int(expires_in.total_seconds())})
        return self.status(tenant_id)

    def resume(self, tenant_id: int) -> Suspension:
        self._call("resume", self.switch.resume, {"tenant_id": tenant_id})
        return self.status(tenant_id)


@contextmanager
def side(ep: Endpoints, switch: SqlSwitch | HttpSwitch, conn_id: str) -> Iterator[Side]:
    """The switch on connection ``conn_id``, open for the block. ``KeyError`` when the connection
    is not defined."""
    if isinstance(switch, HttpSwitch):
        api = HttpSide(ep.http(conn_id), switch, conn_id)
        try:
            yield api
        finally:
            api.close()
    else:
        with ep.postgres(conn_id).connect(autocommit=True) as conn:
            yield SqlSide(conn, switch, conn_id)


def _render(value: Any, values: dict[str, Any]) -> Any:
    """A JSON body with every string value a template; a value that is exactly one field keeps
    the field's type (``"{expires_in_s}"`` is a number)."""
    if isinstance(value, str):
        whole = value.strip()
        if whole.startswith("{") and whole.endswith("}") and whole[1:-1] in values:
            return values[whole[1:-1]]
        return value.format(**values)
    if isinstance(value, dict):
        return {k: _render(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, values) for v in value]
    return value


def _dig(doc: Any, path: str, label: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            raise RegistrationError(f"registrations.status on {label}: the answer has no {path!r} "
                                    f"(registrations.answer)")
        doc = doc[part]
    return doc


def _when(value: Any, label: str) -> datetime | None:
    if value is None:
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(float(value), UTC)
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (TypeError, ValueError, OverflowError):
        raise RegistrationError(f"registrations.status on {label}: suspended_until {value!r} is no time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _server_time(date_header: str | None) -> datetime:
    """The platform's clock (its ``Date`` header) judges its own expiry; ours when it sends none."""
    if date_header:
        try:
            return parsedate_to_datetime(date_header)
        except (TypeError, ValueError):
            pass
    return datetime.now(UTC)


def _timed_out(exc: Exception) -> bool:
    """A connect or read timeout, raised as such or as the last reason of exhausted retries."""
    import requests
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    if isinstance(exc, requests.exceptions.Timeout):
        return True
    inner = exc.args[0] if exc.args else None
    return isinstance(getattr(inner, "reason", None), Urllib3Timeout)


def _reason(exc: Exception) -> str:
    inner = getattr(exc.args[0], "reason", None) if exc.args else None
    return str(inner or exc).split(": ", 1)[-1][:200]
