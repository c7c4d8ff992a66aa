"""The migration request: trigger params validated into a typed, immutable ``MigrationSpec``.

Validation is pure (no database): it rejects malformed params before any task touches a server.
Whether the tenant exists is checked against the replica by ``preflight``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

_PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class InvalidParams(ValueError):
    """The trigger params cannot describe a migration; the message names the param."""


@dataclass(frozen=True)
class MigrationSpec:
    tenant_id: int
    # The platform profile (``profile``): a name in the deployment's profiles folder; "" is the
    # folder's only profile. Read by every step when it runs, never at parse time.
    platform: str = ""
    dry_run: bool = False
    chunk_rows: int = 50_000
    cassandra_concurrency: int = 64
    cassandra_days: int = 0  # 0: the tenant map's whole retention window (plan_days)
    partial_history_ok: bool = False  # a smaller cassandra_days is intended: gate_final accepts it
    dns_zone: str = "iot.example.test."
    target_endpoint_prefix: str = "vpc"
    max_lag_bytes: int = 1024 * 1024
    max_lag_seconds: int = 10
    catch_up_timeout_s: int = 900
    suspension_minutes: int = 30
    lowered_ttl: int = 30
    max_ttl_wait_s: int = 300
    drain_seconds: int = 60  # the drain's minimum length
    drain_quiet_s: int = 30  # ... then it ends once no new write reached the shared platform for this long
    drain_max_s: int = 900  # ... or fails loudly when the tenant still writes there after this
    sequence_headroom: int = 1_000_000  # target sequences start this far past the source's (stragglers' keys)
    require_approval: bool = True
    max_tasks: int = 2  # the copy pools' slots: more tasks only add Airflow overhead (docs/benchmarks.md)
    min_task_seconds: int = 30  # estimated copy work per mapped copy task (sizing.py, docs/benchmarks.md)
    load_rate: int = 500
    load_seconds: int = 10
    load_max_p99_ms: int = 50
    load_min_rate_pct: int = 95
    dns_shift_percent_steps: tuple[int, ...] = ()  # empty: the direct flip
    dns_shift_dwell_s: int = 300
    time_budget_minutes: int = 480  # the run's time budget: over it, an alert (alerts.py); 0: none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def plan_days(self) -> int | None:
        """Day buckets the Cassandra plan asks for: None for the whole retention window."""
        return self.cassandra_days or None


def _int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, default)
    if isinstance(raw, bool) or raw is None:
        raise InvalidParams(f"param '{name}' must be an integer, got {raw!r}")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidParams(f"param '{name}' must be an integer, got {raw!r}") from None
    if isinstance(raw, float) and raw != value:
        raise InvalidParams(f"param '{name}' must be an integer, got {raw!r}")
    if not lo <= value <= hi:
        raise InvalidParams(f"param '{name}' must be between {lo} and {hi}, got {value}")
    return value


def _bool(params: dict[str, Any], name: str, default: bool) -> bool:
    raw = params.get(name, default)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in {"true", "false"}:
        return raw.lower() == "true"
    raise InvalidParams(f"param '{name}' must be true or false, got {raw!r}")


def _percent_steps(params: dict[str, Any], name: str) -> tuple[int, ...]:
    """``"10,50,100"`` (the form) or ``[10, 50, 100]`` (REST conf): ascending, each 1..100, the
    last 100. Empty means the direct flip."""
    raw = params.get(name) or ()
    parts = [p.strip() for p in raw.split(",")] if isinstance(raw, str) else list(raw)
    try:
        if any(isinstance(p, bool) or (isinstance(p, float) and p != int(p)) for p in parts):
            raise ValueError
        steps = tuple(int(p) for p in parts if p != "")
    except (TypeError, ValueError):
        raise InvalidParams(f"param '{name}' must be comma-separated percentages like '10,50,100', got {raw!r}") from None
    if not steps:
        return ()
    if any(not 1 <= p <= 100 for p in steps):
        raise InvalidParams(f"param '{name}': every step must be between 1 and 100 %, got {raw!r}")
    if list(steps) != sorted(set(steps)):
        raise InvalidParams(f"param '{name}': steps must be strictly ascending, got {raw!r}")
    if steps[-1] != 100:
        raise InvalidParams(f"param '{name}': the last step must be 100 (all traffic on the target), got {raw!r}")
    return steps


def parse_spec(params: dict[str, Any]) -> MigrationSpec:
    """Build a ``MigrationSpec`` from trigger params or raise ``InvalidParams``."""
    known = set(MigrationSpec.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidParams(f"unknown param(s): {', '.join(unknown)}; expected some of {sorted(known)}")
    if "tenant_id" not in params or params["tenant_id"] in (None, ""):
        raise InvalidParams("param 'tenant_id' is required")
    zone = str(params.get("dns_zone", MigrationSpec.dns_zone))
    if not zone.endswith(".") or ".." in zone or " " in zone:
        raise InvalidParams(f"param 'dns_zone' must be a fully qualified zone ending in '.', got {zone!r}")
    prefix = str(params.get("target_endpoint_prefix", MigrationSpec.target_endpoint_prefix))
    if not _SLUG.match(prefix):
        raise InvalidParams(f"param 'target_endpoint_prefix' must be a DNS label, got {prefix!r}")
    platform = params.get("platform") or ""
    if not isinstance(platform, str) or (platform and not _PROFILE.match(platform)):
        raise InvalidParams(f"param 'platform' must be a profile name (letters, digits, '_.-'), got {platform!r}")
    spec = MigrationSpec(
        tenant_id=_int(params, "tenant_id", 0, 1, 2**62),
        platform=platform,
        dry_run=_bool(params, "dry_run", MigrationSpec.dry_run),
        chunk_rows=_int(params, "chunk_rows", MigrationSpec.chunk_rows, 100, 10_000_000),
        cassandra_concurrency=_int(params, "cassandra_concurrency", MigrationSpec.cassandra_concurrency, 1, 1024),
        cassandra_days=_int(params, "cassandra_days", MigrationSpec.cassandra_days, 0, 3650),
        partial_history_ok=_bool(params, "partial_history_ok", MigrationSpec.partial_history_ok),
        dns_zone=zone,
        target_endpoint_prefix=prefix,
        max_lag_bytes=_int(params, "max_lag_bytes", MigrationSpec.max_lag_bytes, 0, 2**40),
        max_lag_seconds=_int(params, "max_lag_seconds", MigrationSpec.max_lag_seconds, 0, 86_400),
        catch_up_timeout_s=_int(params, "catch_up_timeout_s", MigrationSpec.catch_up_timeout_s, 1, 86_400),
        suspension_minutes=_int(params, "suspension_minutes", MigrationSpec.suspension_minutes, 1, 24 * 60),
        lowered_ttl=_int(params, "lowered_ttl", MigrationSpec.lowered_ttl, 1, 86_400),
        max_ttl_wait_s=_int(params, "max_ttl_wait_s", MigrationSpec.max_ttl_wait_s, 0, 86_400),
        drain_seconds=_int(params, "drain_seconds", MigrationSpec.drain_seconds, 0, 86_400),
        drain_quiet_s=_int(params, "drain_quiet_s", MigrationSpec.drain_quiet_s, 0, 86_400),
        drain_max_s=_int(params, "drain_max_s", MigrationSpec.drain_max_s, 1, 86_400),
        sequence_headroom=_int(params, "sequence_headroom", MigrationSpec.sequence_headroom, 0, 2**62),
        require_approval=_bool(params, "require_approval", MigrationSpec.require_approval),
        max_tasks=_int(params, "max_tasks", MigrationSpec.max_tasks, 1, 256),
        min_task_seconds=_int(params, "min_task_seconds", MigrationSpec.min_task_seconds, 0, 86_400),
        load_rate=_int(params, "load_rate", MigrationSpec.load_rate, 0, 1_000_000),
        load_seconds=_int(params, "load_seconds", MigrationSpec.load_seconds, 1, 3600),
        time_budget_minutes=_int(params, "time_budget_minutes", MigrationSpec.time_budget_minutes, 0, 7 * 24 * 60),
        load_max_p99_ms=_int(params, "load_max_p99_ms", MigrationSpec.load_max_p99_ms, 1, 60_000),
        load_min_rate_pct=_int(params, "load_min_rate_pct", MigrationSpec.load_min_rate_pct, 1, 100),
        dns_shift_percent_steps=_percent_steps(params, "dns_shift_percent_steps"),
        dns_shift_dwell_s=_int(params, "dns_shift_dwell_s", MigrationSpec.dns_shift_dwell_s, 0, 86_400),
    )
    # Registrations stay suspended for the whole shift: it must end well before their expiry.
    shift_s = spec.dns_shift_dwell_s * max(0, len(spec.dns_shift_percent_steps) - 1)
    if shift_s >= spec.suspension_minutes * 60 // 2:
        raise InvalidParams(f"params 'dns_shift_percent_steps' / 'dns_shift_dwell_s': the shift dwells {shift_s} s, "
                            f"more than half of the registrations' suspension ('suspension_minutes' = "
                            f"{spec.suspension_minutes}): shorten the dwell or raise the suspension")
    if spec.drain_max_s < spec.drain_seconds + spec.drain_quiet_s:
        raise InvalidParams(f"param 'drain_max_s' ({spec.drain_max_s}) must be at least 'drain_seconds' + "
                            f"'drain_quiet_s' ({spec.drain_seconds} + {spec.drain_quiet_s}): the drain could never "
                            f"end quiet")
    # The drain runs with registrations suspended too: it must end before their expiry.
    if shift_s + spec.drain_max_s >= spec.suspension_minutes * 60:
        raise InvalidParams(f"params 'drain_max_s' / 'suspension_minutes': the drain may last {spec.drain_max_s} s "
                            f"(after a shift of {shift_s} s), longer than the registrations' suspension "
                            f"({spec.suspension_minutes} min): lower 'drain_max_s' or raise the suspension")
    return spec
