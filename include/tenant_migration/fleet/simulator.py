"""The tenant's device fleet and app traffic, writing through DNS for the whole migration.

Devices send datapoints (background mode: a few per hour; active mode: several per second), apps
update properties and rules in PostgreSQL, and a trickle of new users registers. Every client
resolves its endpoint through the tenant's Route53 records with TTL caching (``CachingResolver``),
so after the flip stragglers keep writing to the old platform until their cache expires. Every
attempt is journaled (``Journal``) so that loss can be proven afterwards.

Each datapoint carries an explicit write timestamp equal to its ``ts``: the same cell written to
either platform converges to the same value whatever copy or drain brings it across.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenant_migration.endpoints import CassandraEndpoint, Endpoints, PgEndpoint
from tenant_migration.fleet.journal import Journal, WriteRecord
from tenant_migration.fleet.resolver import CachingResolver


@dataclass(frozen=True)
class FleetConfig:
    tenant_id: int
    slug: str
    zone: str = "iot.example.test."
    prefix: str = "vpc"
    devices: int = 200
    active_fraction: float = 0.1
    background_per_hour: float = 6.0
    active_per_second: float = 2.0
    app_updates_per_second: float = 1.0
    registrations_per_minute: float = 6.0
    registration_retry_s: float = 5.0
    duration_s: float = 60.0
    max_in_flight: int = 256
    seed: int = 11

    @property
    def write_rate(self) -> float:
        """Datapoints per second across the fleet."""
        active = round(self.devices * self.active_fraction)
        return active * self.active_per_second + (self.devices - active) * self.background_per_hour / 3600.0


@dataclass
class EndpointDirectory:
    """Which server a DNS endpoint name stands for (what a load balancer name is to a client)."""

    cassandra: dict[str, CassandraEndpoint]
    postgres: dict[str, PgEndpoint]

    @classmethod
    def for_tenant(cls, ep: Endpoints, app_on_target: PgEndpoint, zone: str, slug: str, prefix: str) -> EndpointDirectory:
        return cls(
            cassandra={f"devices.shared.{zone}": ep.cassandra_source, f"devices.{prefix}-{slug}.{zone}": ep.cassandra_target},
            postgres={f"api.shared.{zone}": ep.source_primary, f"api.{prefix}-{slug}.{zone}": app_on_target},
        )


@dataclass
class FleetStats:
    attempted: Counter[str] = field(default_factory=Counter)
    acked: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    by_endpoint: Counter[str] = field(default_factory=Counter)
    failed_seconds: set[int] = field(default_factory=set)
    latencies_ms: list[float] = field(default_factory=list)
    registrations_rejected: int = 0
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        return {"attempted": dict(self.attempted), "acked": dict(self.acked), "failed": dict(self.failed),
                "by_endpoint": dict(self.by_endpoint), "device_write_unavailable_seconds": len(self.failed_seconds),
                "registrations_rejected": self.registrations_rejected, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                "seconds": round(self.finished - self.started, 1)}


class Fleet:
    """Runs the simulated fleet against whatever the tenant's DNS records say, for a duration."""

    def __init__(self, config: FleetConfig, resolver: CachingResolver, directory: EndpointDirectory,
                 journal: Journal, pairs: list[tuple[int, int]], clock: Callable[[], float] = time.time) -> None:
        if not pairs:
            raise ValueError(f"tenant {config.tenant_id} has no (device, property) pairs to simulate")
        self.config = config
        self.resolver = resolver
        self.directory = directory
        self.journal = journal
        self.clock = clock
        rng = random.Random(config.seed)
        devices = sorted({d for d, _ in pairs})[: config.devices]
        props: dict[int, list[int]] = defaultdict(list)
        for d, p in pairs:
            props[d].append(p)
        self.devices = devices
        self.props = props
        self.active = set(rng.sample(devices, round(len(devices) * config.active_fraction)))
        self.rng = rng
        self.stats = FleetStats()
        self._sessions: dict[str, Any] = {}
        self._prepared: dict[str, Any] = {}
        self._in_flight = threading.BoundedSemaphore(config.max_in_flight)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clusters: list[Any] = []

    # -- devices -----------------------------------------------------------------------------
    def _session(self, endpoint: str) -> tuple[Any, Any]:
        with self._lock:
            if endpoint not in self._sessions:
                target = self.directory.cassandra[endpoint]
                cluster = target.cluster(request_timeout=5.0)
                session = cluster.connect()
                self._clusters.append(cluster)
                self._sessions[endpoint] = session
                self._prepared[endpoint] = session.prepare(
                    "INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                    "VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?")
            return self._sessions[endpoint], self._prepared[endpoint]

    def _pick_device(self) -> int:
        # Active devices write far more often: weight the draw by each device's rate.
        active_rate = len(self.active) * self.config.active_per_second
        total = self.config.write_rate
        if self.active and self.rng.random() < active_rate / total:
            return self.rng.choice(sorted(self.active))
        return self.rng.choice(self.devices)

    def _write_datapoint(self) -> None:
        device = self._pick_device()
        prop = self.rng.choice(self.props[device])
        now = datetime.now(UTC)
        ts_ms = int(now.timestamp() * 1000)
        value = round(self.rng.uniform(-50, 150), 3)
        name = f"devices.{self.config.slug}.{self.config.zone}"
        started = self.clock()
        write_id = uuid.uuid4().hex
        try:
            endpoint = self.resolver.resolve(name).endpoint
            session, stmt = self._session(endpoint)
        except Exception as exc:
            self._record(WriteRecord(write_id, "datapoint", started, "?", False, 0.0, f"{type(exc).__name__}: {exc}"))
            return
        payload = {"device_id": device, "property_id": prop, "day": now.date().isoformat(), "ts_ms": ts_ms,
                   "value": value, "writetime": ts_ms * 1000}
        self._in_flight.acquire()
        future = session.execute_async(stmt, (device, prop, now.date(), datetime.fromtimestamp(ts_ms / 1000, UTC),
                                              value, 0, ts_ms * 1000))

        def done(_: Any) -> None:
            self._in_flight.release()
            self._record(WriteRecord(write_id, "datapoint", started, endpoint, True,
                                     (self.clock() - started) * 1000, None, payload))

        def failed(exc: BaseException) -> None:
            self._in_flight.release()
            self._record(WriteRecord(write_id, "datapoint", started, endpoint, False,
                                     (self.clock() - started) * 1000, f"{type(exc).__name__}: {exc}", payload))

        future.add_callbacks(done, failed)

    # -- apps ----------------------------------------------------------------------------------
    def _app_conn(self, endpoint: str, cache: dict[str, Any]) -> Any:
        if endpoint not in cache:
            cache[endpoint] = self.directory.postgres[endpoint].connect(autocommit=True, application_name="fleet")
        return cache[endpoint]

    def _app_loop(self, conns: dict[str, Any]) -> None:
        period = 1.0 / self.config.app_updates_per_second if self.config.app_updates_per_second > 0 else None
        reg_period = 60.0 / self.config.registrations_per_minute if self.config.registrations_per_minute > 0 else None
        next_app = next_reg = self.clock()
        retries: list[tuple[float, str]] = []
        rng = random.Random(self.config.seed + 1)
        while not self._stop.is_set():
            now = self.clock()
            if period and now >= next_app:
                next_app += period
                self._app_update(conns, rng)
            due = [r for r in retries if r[0] <= now]
            for r in due:
                retries.remove(r)
                self._register(conns, r[1], retries)
            if reg_period and now >= next_reg:
                next_reg += reg_period
                self._register(conns, uuid.uuid4().hex[:12], retries)
            time.sleep(0.02)
        for _, key in retries:  # one last try for every registration still pending
            self._register(conns, key, [])

    def _app_update(self, conns: dict[str, Any], rng: random.Random) -> None:
        device = rng.choice(self.devices)
        prop = rng.choice(self.props[device])
        unit = f"u{rng.randint(0, 10**6)}"
        self._pg_write(conns, "app", "UPDATE platform.properties SET unit = %s WHERE property_id = %s",
                       (unit, prop), {"property_id": prop, "unit": unit})

    def _register(self, conns: dict[str, Any], key: str, retries: list[tuple[float, str]]) -> None:
        user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-{self.config.tenant_id}-{key}"))
        ok = self._pg_write(
            conns, "registration",
            "INSERT INTO platform.users (user_id, tenant_id, email, display_name, role) VALUES (%s, %s, %s, %s, 'viewer') "
            "ON CONFLICT (user_id) DO NOTHING",
            (user_id, self.config.tenant_id, f"fleet-{key}@example.test", f"fleet {key}"),
            {"user_id": user_id, "key": key})
        if not ok:
            with self._lock:
                self.stats.registrations_rejected += 1
            retries.append((self.clock() + self.config.registration_retry_s, key))

    def _pg_write(self, conns: dict[str, Any], kind: str, query: str, params: tuple[Any, ...],
                  payload: dict[str, Any]) -> bool:
        started = self.clock()
        write_id = uuid.uuid4().hex
        endpoint = "?"
        try:
            endpoint = self.resolver.resolve(f"api.{self.config.slug}.{self.config.zone}").endpoint
            self._app_conn(endpoint, conns).execute(query, params)
        except Exception as exc:
            conns.pop(endpoint, None)
            self._record(WriteRecord(write_id, kind, started, endpoint, False, (self.clock() - started) * 1000,
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", payload))
            return False
        self._record(WriteRecord(write_id, kind, started, endpoint, True, (self.clock() - started) * 1000, None, payload))
        return True

    # -- bookkeeping ---------------------------------------------------------------------------
    def _record(self, rec: WriteRecord) -> None:
        self.journal.append(rec)
        with self._lock:
            self.stats.attempted[rec.kind] += 1
            self.stats.by_endpoint[rec.endpoint] += 1
            if rec.acked:
                self.stats.acked[rec.kind] += 1
                if rec.kind == "datapoint":
                    self.stats.latencies_ms.append(rec.latency_ms)
            else:
                self.stats.failed[rec.kind] += 1
                if rec.kind == "datapoint":
                    self.stats.failed_seconds.add(int(rec.started))

    def stop(self) -> None:
        self._stop.set()

    def run(self, duration_s: float | None = None) -> FleetStats:
        """Write at the configured rates until ``duration_s`` passes or ``stop()`` is called."""
        duration = self.config.duration_s if duration_s is None else duration_s
        self.stats.started = self.clock()
        deadline = self.stats.started + duration
        conns: dict[str, Any] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-app") as pool:
            app = pool.submit(self._app_loop, conns)
            credit = 0.0
            last = self.clock()
            while not self._stop.is_set() and self.clock() < deadline:
                now = self.clock()
                credit += (now - last) * self.config.write_rate
                last = now
                while credit >= 1.0:
                    credit -= 1.0
                    self._write_datapoint()
                time.sleep(0.01)
            self._stop.set()
            app.result()
        for _ in range(self.config.max_in_flight):  # wait for every in-flight write to be journaled
            self._in_flight.acquire()
        for _ in range(self.config.max_in_flight):
            self._in_flight.release()
        self.stats.finished = self.clock()
        for conn in conns.values():
            conn.close()
        for cluster in self._clusters:
            cluster.shutdown()
        return self.stats


def tenant_pairs(replica: PgEndpoint, tenant_id: int, limit: int) -> list[tuple[int, int]]:
    """(device, property) pairs of the tenant's first ``limit`` devices."""
    with replica.connect(autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.device_id, p.property_id FROM platform.properties p "
            "WHERE p.device_id IN (SELECT d.device_id FROM platform.devices d WHERE d.tenant_id = %s "
            "ORDER BY d.device_id LIMIT %s) ORDER BY 1, 2", (tenant_id, limit)).fetchall()
    return [(int(r[0]), int(r[1])) for r in rows]


def journal_path(base: Path, tenant_id: int) -> Path:
    return base / f"fleet-tenant{tenant_id}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.jsonl"
