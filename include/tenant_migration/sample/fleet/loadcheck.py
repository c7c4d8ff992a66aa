"""The SET phase's load check ("Gatling" step): drive the TARGET with the tenant's own write shape
at a given rate, straight at its endpoints (no DNS: the records still point at the shared
platform), and measure p50/p99 latency and errors. Usable as a gate with thresholds.

Design note. Writes use the tenant's real (device, property) pairs so that they land on the same
partitions and replicas real traffic will, but all in ONE sentinel day bucket (``LOAD_DAY``,
1970-01-02) with a short TTL: no copy, catch-up, fingerprint or gate looks at that day, and the
cells expire by themselves; the check also deletes its partitions when done. One CPython process
tops out at a few thousand writes/s, so the offered rate is split over ``processes`` worker
processes, each a ``Fleet`` with a static resolver. Latency is measured from the moment a write was
due to its acknowledgement (a saturated generator shows up as latency, not as a lower rate).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from tenant_migration.endpoints import Endpoints
from tenant_migration.sample.fleet.journal import WriteRecord
from tenant_migration.sample.fleet.simulator import (
    EndpointDirectory,
    Fleet,
    FleetConfig,
    StaticResolver,
    TenantProfile,
    tenant_profile,
)
from tenant_migration.spec import MigrationSpec
from tenant_migration.validation.counts import GateFailed

LOAD_DAY = date(1970, 1, 2)
DEFAULT_RATE = 500.0
DEFAULT_SECONDS = 10.0
DEFAULT_MAX_P99_MS = 50.0
DEFAULT_MAX_ERRORS = 0


class LoadCheckFailed(GateFailed):
    """The target did not sustain the offered rate within the thresholds."""


@dataclass
class LoadResult:
    offered_rate: float
    seconds: float
    processes: int
    writes: int = 0
    acked: int = 0
    errors: int = 0
    achieved_rate: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    error_examples: list[str] = field(default_factory=list)

    def passes(self, max_p99_ms: float, max_errors: int, min_rate_fraction: float = 0.95) -> bool:
        return (self.errors <= max_errors and self.p99_ms is not None and self.p99_ms <= max_p99_ms
                and self.achieved_rate >= min_rate_fraction * self.offered_rate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Collector:
    """A journal that keeps only what the load check needs, in memory (no file I/O per write)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def append(self, record: WriteRecord) -> None:
        if record.acked:
            self.latencies.append(record.latency_ms)
        else:
            self.errors.append(record.error or "?")

    def close(self) -> None:
        pass


def _target_directory(ep: Endpoints, zone: str) -> tuple[StaticResolver, EndpointDirectory]:
    name = f"devices.load-check.{zone}"
    return StaticResolver({name: name}), EndpointDirectory(cassandra={name: ep.cassandra_target}, postgres={})


def _worker(args: tuple[Endpoints, TenantProfile, float, float, int, int]) -> tuple[list[float], list[str], float]:
    ep, profile, rate, seconds, seed, devices = args
    resolver, directory = _target_directory(ep, "iot.example.test.")
    n = max(1, min(devices, len({d for d, _ in profile.pairs})))  # every device active: rate = n * per-device
    cfg = FleetConfig(tenant_id=0, slug="load-check", devices=n, active_fraction=1.0, active_per_second=rate / n,
                      app_updates_per_second=0.0, registrations_per_minute=0.0, device_registrations_per_minute=0.0,
                      duration_s=seconds, max_in_flight=512, seed=seed, fixed_day=LOAD_DAY, write_ttl_s=600,
                      request_timeout_s=2.0)
    collector = _Collector()
    fleet = Fleet(cfg, resolver, directory, collector, profile)  # type: ignore[arg-type]
    fleet.connect_all()
    started = time.monotonic()
    fleet.run()
    return collector.latencies, collector.errors, time.monotonic() - started


def _pct(values: list[float], p: float) -> float | None:
    return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else None


def run_load(ep: Endpoints, profile: TenantProfile, rate: float, seconds: float, processes: int = 1,
             devices: int = 10_000) -> LoadResult:
    """Offer ``rate`` datapoint writes/s to the target for ``seconds``, split over ``processes``."""
    processes = max(1, processes)
    jobs = [(ep, profile, rate / processes, seconds, 1000 + i, devices) for i in range(processes)]
    if processes == 1:
        outs = [_worker(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(processes) as pool:
            outs = pool.map(_worker, jobs)
    lat = sorted(x for o in outs for x in o[0])
    errors = [e for o in outs for e in o[1]]
    wall = max(o[2] for o in outs)
    res = LoadResult(offered_rate=rate, seconds=round(wall, 3), processes=processes, writes=len(lat) + len(errors),
                     acked=len(lat), errors=len(errors), achieved_rate=round(len(lat) / wall, 1) if wall else 0.0,
                     p50_ms=_pct(lat, 0.5), p99_ms=_pct(lat, 0.99), max_ms=round(lat[-1], 2) if lat else None,
                     error_examples=sorted(set(errors))[:5])
    return res


def clean_up(ep: Endpoints, profile: TenantProfile) -> int:
    """Delete the load check's sentinel-day partitions (they would expire anyway)."""
    with ep.cassandra_target.session() as s:
        stmt = s.prepare("DELETE FROM telemetry.datapoints WHERE device_id = ? AND property_id = ? AND day = ?")
        for d, p in profile.pairs:
            s.execute(stmt, (d, p, LOAD_DAY))
    return len(profile.pairs)


def load_check(ep: Endpoints, spec: MigrationSpec, run_id: str, rate: float | None = None,
               seconds: float | None = None, max_p99_ms: float | None = None, max_errors: int | None = None,
               processes: int | None = None, devices: int = 10_000, min_rate_fraction: float = 0.95) -> dict[str, Any]:
    """SET-phase gate: the target takes the tenant's write shape at ``rate`` within the thresholds.

    Defaults come from the arguments, else ``TM_LOAD_RATE`` / ``TM_LOAD_SECONDS`` /
    ``TM_LOAD_MAX_P99_MS`` / ``TM_LOAD_MAX_ERRORS`` / ``TM_LOAD_PROCESSES``, else the constants above.
    The evidence (``load_check`` event in the ledger) is recorded before a failure raises.
    """
    from tenant_migration import ledger

    if spec.dry_run:
        return {"skipped": "dry run"}
    rate = rate if rate is not None else float(os.environ.get("TM_LOAD_RATE", DEFAULT_RATE))
    seconds = seconds if seconds is not None else float(os.environ.get("TM_LOAD_SECONDS", DEFAULT_SECONDS))
    max_p99_ms = max_p99_ms if max_p99_ms is not None else float(os.environ.get("TM_LOAD_MAX_P99_MS",
                                                                                   DEFAULT_MAX_P99_MS))
    max_errors = max_errors if max_errors is not None else int(os.environ.get("TM_LOAD_MAX_ERRORS", DEFAULT_MAX_ERRORS))
    processes = processes if processes is not None else int(os.environ.get("TM_LOAD_PROCESSES", "1"))
    profile = tenant_profile(ep.replica, spec.tenant_id, devices)
    if not profile.pairs:
        raise LoadCheckFailed(f"tenant {spec.tenant_id} has no (device, property) pairs to shape the load on")
    try:
        result = run_load(ep, profile, rate, seconds, processes, devices)
    finally:
        clean_up(ep, profile)
    passed = result.passes(max_p99_ms, max_errors, min_rate_fraction)
    evidence = {"passed": passed, "thresholds": {"max_p99_ms": max_p99_ms, "max_errors": max_errors,
                                                 "min_rate_fraction": min_rate_fraction}, **result.to_dict()}
    with ep.target.connect(autocommit=True) as tconn:
        ledger.record_event(tconn, run_id, "load_check", "info", evidence)
    if not passed:
        raise LoadCheckFailed(f"load check failed at {rate:.0f} writes/s: achieved {result.achieved_rate}/s "
                              f"(min {min_rate_fraction * rate:.0f}/s), "
                              f"p99 {result.p99_ms} ms (max {max_p99_ms}), errors {result.errors} (max {max_errors})")
    return evidence
