"""The tenant's device fleet and app traffic, writing through DNS for the whole migration.

Devices send datapoints (background mode: a few per hour; active mode: several per second), apps
update properties and rules in PostgreSQL, and a trickle of new users AND devices registers. Every
client resolves its endpoint through the tenant's Route53 records with its own TTL cache
(``CachingResolver``), so after the flip stragglers keep writing to the old platform until their
cache expires. Every attempt is journaled (``Journal``) so that loss can be proven afterwards.

Each datapoint carries an explicit write timestamp equal to its ``ts``, and a device never sends two
datapoints of one property with the same ``ts`` (the millisecond is bumped): the same cell written
to either platform converges to the same value whatever copy or drain brings it across, and no two
acknowledged writes share a cell (a tie would be settled by value, not by the journal).

Devices are spread over ``dns_clients`` caches (device ``d`` uses cache ``d % dns_clients``), app
traffic over ``app_clients``: each cache fetched its answer at its own moment, so the switch after
the flip is spread over a TTL as it is in the field.
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
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

from tenant_migration.endpoints import CassandraEndpoint, Endpoints, PgEndpoint
from tenant_migration.sample.fleet.journal import Journal, WriteRecord
from tenant_migration.sample.fleet.resolver import Answer


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
    device_registrations_per_minute: float = 3.0
    registration_retry_s: float = 5.0
    rule_update_share: float = 0.3  # fraction of app updates that change a rule (else a property)
    dns_clients: int = 16
    # Devices of the first ``pinned_dns_clients`` caches ignore TTLs: they keep an answer for
    # ``pin_seconds`` (stragglers that outlive any TTL-based drain).
    pinned_dns_clients: int = 0
    pin_seconds: float = 0.0
    app_clients: int = 2
    request_timeout_s: float = 5.0
    # Load checks only: write every datapoint into this day bucket (far outside the migrated days,
    # so no gate or copy ever sees it) and let it expire after ``write_ttl_s``.
    fixed_day: date | None = None
    write_ttl_s: int | None = None
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
    dns_lookups: int = 0
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None

        return {"attempted": dict(self.attempted), "acked": dict(self.acked), "failed": dict(self.failed),
                "by_endpoint": dict(self.by_endpoint), "device_write_unavailable_seconds": len(self.failed_seconds),
                "registrations_rejected": self.registrations_rejected,
                "dns_lookups": self.dns_lookups, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
                "seconds": round(self.finished - self.started, 1)}


@dataclass(frozen=True)
class TenantProfile:
    """What the fleet writes to, read from the tenant's real rows: its (device, property) pairs,
    rules, a device model and users (device registrations need both)."""

    pairs: list[tuple[int, int]]
    rules: list[int] = field(default_factory=list)
    model_id: int | None = None
    user_ids: list[str] = field(default_factory=list)


class Fleet:
    """Runs the simulated fleet against whatever the tenant's DNS records say, for a duration."""

    def __init__(self, config: FleetConfig, resolver: Resolver, directory: EndpointDirectory,
                 journal: Journal, profile: TenantProfile | list[tuple[int, int]],
                 clock: Callable[[], float] = time.time) -> None:
        if isinstance(profile, list):
            profile = TenantProfile(pairs=profile)
        if not profile.pairs:
            raise ValueError(f"tenant {config.tenant_id} has no (device, property) pairs to simulate")
        self.config = config
        self.resolver = resolver
        self.directory = directory
        self.journal = journal
        self.profile = profile
        self.clock = clock
        rng = random.Random(config.seed)
        devices = sorted({d for d, _ in profile.pairs})[: config.devices]
        props: dict[int, list[int]] = defaultdict(list)
        for d, p in profile.pairs:
            props[d].append(p)
        self.devices = devices
        self.props = props
        self.active = sorted(rng.sample(devices, round(len(devices) * config.active_fraction)))
        self.rng = rng
        self.stats = FleetStats()
        self._sessions: dict[str, Any] = {}
        self._prepared: dict[str, Any] = {}
        self._last_ts: dict[tuple[int, int], int] = {}
        self._in_flight = threading.BoundedSemaphore(config.max_in_flight)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._clusters: list[Any] = []

    @property
    def device_name(self) -> str:
        return f"devices.{self.config.slug}.{self.config.zone}"

    @property
    def api_name(self) -> str:
        return f"api.{self.config.slug}.{self.config.zone}"

    # -- devices -----------------------------------------------------------------------------
    def _session(self, endpoint: str) -> tuple[Any, Any]:
        with self._lock:
            if endpoint not in self._sessions:
                target = self.directory.cassandra[endpoint]
                cluster = target.cluster(request_timeout=self.config.request_timeout_s)
                session = cluster.connect()
                self._clusters.append(cluster)
                self._sessions[endpoint] = session
                ttl = f" AND TTL {int(self.config.write_ttl_s)}" if self.config.write_ttl_s else ""
                self._prepared[endpoint] = session.prepare(
                    "INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
                    f"VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?{ttl}")
            return self._sessions[endpoint], self._prepared[endpoint]

    def connect_all(self) -> None:
        """Open a session to every Cassandra endpoint up front: a client's first write after the
        flip must not pay (or time out on) a cold connection."""
        for endpoint in self.directory.cassandra:
            self._session(endpoint)

    def _pick_device(self) -> int:
        # Active devices write far more often: weight the draw by each device's rate.
        active_rate = len(self.active) * self.config.active_per_second
        total = self.config.write_rate
        if self.active and self.rng.random() < active_rate / total:
            return self.rng.choice(self.active)
        return self.rng.choice(self.devices)

    def _next_ts_ms(self, device: int, prop: int, now_ms: int) -> int:
        key = (device, prop)
        ts = max(now_ms, self._last_ts.get(key, 0) + 1)
        self._last_ts[key] = ts
        return ts

    def _write_datapoint(self) -> None:
        device = self._pick_device()
        prop = self.rng.choice(self.props[device])
        ts_ms = self._next_ts_ms(device, prop, int(time.time() * 1000))
        when = datetime.fromtimestamp(ts_ms / 1000, UTC)
        value = round(self.rng.uniform(-50, 150), 3)
        client = f"dev{device % max(1, self.config.dns_clients)}"
        started = self.clock()
        write_id = uuid.uuid4().hex
        day = self.config.fixed_day or when.date()
        payload = {"device_id": device, "property_id": prop, "day": day.isoformat(), "ts_ms": ts_ms,
                   "value": value, "writetime": ts_ms * 1000}
        endpoint = "?"
        try:
            endpoint = self.resolver.resolve(self.device_name, client).endpoint
            session, stmt = self._session(endpoint)
        except Exception as exc:
            self._record(WriteRecord(write_id, "datapoint", started, endpoint, False, 0.0,
                                     f"{type(exc).__name__}: {exc}", payload, client))
            return
        self._in_flight.acquire()

        def done(_: Any) -> None:
            self._in_flight.release()
            self._record(WriteRecord(write_id, "datapoint", started, endpoint, True,
                                     (self.clock() - started) * 1000, None, payload, client))

        def failed(exc: BaseException) -> None:
            self._in_flight.release()
            self._record(WriteRecord(write_id, "datapoint", started, endpoint, False,
                                     (self.clock() - started) * 1000, f"{type(exc).__name__}: {exc}", payload, client))

        try:
            future = session.execute_async(stmt, (device, prop, day, when, value, 0, ts_ms * 1000))
        except Exception as exc:  # raised before any callback could be attached: journal it here
            failed(exc)
            return
        future.add_callbacks(done, failed)

    # -- apps ----------------------------------------------------------------------------------
    def _app_conn(self, endpoint: str, cache: dict[str, Any]) -> Any:
        if endpoint not in cache:
            cache[endpoint] = self.directory.postgres[endpoint].connect(autocommit=True, application_name="fleet")
        return cache[endpoint]

    def _app_loop(self, conns: dict[str, Any]) -> None:
        cfg = self.config
        period = 1.0 / cfg.app_updates_per_second if cfg.app_updates_per_second > 0 else None
        reg_period = 60.0 / cfg.registrations_per_minute if cfg.registrations_per_minute > 0 else None
        dev_period = 60.0 / cfg.device_registrations_per_minute if cfg.device_registrations_per_minute > 0 else None
        can_register_devices = self.profile.model_id is not None and bool(self.profile.user_ids)
        next_app = next_reg = next_dev = self.clock()
        retries: list[tuple[float, str, str]] = []
        rng = random.Random(cfg.seed + 1)
        n = 0
        while not self._stop.is_set():
            now = self.clock()
            if period and now >= next_app:
                next_app += period
                n += 1
                self._app_update(conns, rng, f"app{n % max(1, cfg.app_clients)}")
            for r in [r for r in retries if r[0] <= now]:
                retries.remove(r)
                self._register(conns, r[1], r[2], retries)
            if reg_period and now >= next_reg:
                next_reg += reg_period
                self._register(conns, "registration", uuid.UUID(int=rng.getrandbits(128)).hex[:12], retries)
            if dev_period and can_register_devices and now >= next_dev:
                next_dev += dev_period
                self._register(conns, "device_registration", uuid.UUID(int=rng.getrandbits(128)).hex[:12], retries)
            time.sleep(0.02)
        for _, kind, key in retries:  # one last try for every registration still pending
            self._register(conns, kind, key, [])

    def _app_update(self, conns: dict[str, Any], rng: random.Random, client: str) -> None:
        value = f"u{rng.randint(0, 10**6)}"
        if self.profile.rules and rng.random() < self.config.rule_update_share:
            rule = rng.choice(self.profile.rules)
            threshold = float(rng.randint(0, 10**6))
            self._pg_write(conns, "app", "UPDATE platform.rules SET threshold = %s WHERE rule_id = %s",
                           (threshold, rule), {"table": "rules", "key_column": "rule_id", "key": rule,
                                               "column": "threshold", "value": threshold}, client)
            return
        device = rng.choice(self.devices)
        prop = rng.choice(self.props[device])
        self._pg_write(conns, "app", "UPDATE platform.properties SET unit = %s WHERE property_id = %s",
                       (value, prop), {"table": "properties", "key_column": "property_id", "key": prop,
                                       "column": "unit", "value": value}, client)

    def _register(self, conns: dict[str, Any], kind: str, key: str, retries: list[tuple[float, str, str]]) -> None:
        tid = self.config.tenant_id
        if kind == "registration":
            user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-{tid}-{key}"))
            ok = self._pg_write(
                conns, kind,
                "INSERT INTO platform.users (user_id, tenant_id, email, display_name, role) "
                "VALUES (%s, %s, %s, %s, 'viewer') ON CONFLICT (user_id) DO NOTHING",
                (user_id, tid, f"fleet-{tid}-{key}@example.test", f"fleet {key}"), {"user_id": user_id, "key": key},
                "registrar")
        else:
            device_id = fleet_device_id(tid, key)
            reg_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-reg-{tid}-{key}"))
            user_id = self.profile.user_ids[int(key, 16) % len(self.profile.user_ids)]
            ok = self._pg_write(
                conns, kind,
                [("INSERT INTO platform.devices (device_id, tenant_id, serial, model_id, name) "
                  "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (device_id) DO NOTHING",
                  (device_id, tid, f"fleet-{tid}-{key}", self.profile.model_id, f"fleet {key}")),
                 ("INSERT INTO platform.device_registrations (registration_id, device_id, user_id, status) "
                  "VALUES (%s, %s, %s, 'active') ON CONFLICT (registration_id) DO NOTHING",
                  (reg_id, device_id, user_id))],
                (), {"device_id": device_id, "registration_id": reg_id, "key": key}, "registrar")
        if not ok:
            with self._lock:
                self.stats.registrations_rejected += 1
            retries.append((self.clock() + self.config.registration_retry_s, kind, key))

    def _pg_write(self, conns: dict[str, Any], kind: str, query: str | list[tuple[str, tuple[Any, ...]]],
                  params: tuple[Any, ...], payload: dict[str, Any], client: str) -> bool:
        """One app request: a statement, or a list of statements run in one transaction."""
        started = self.clock()
        write_id = uuid.uuid4().hex
        endpoint = "?"
        try:
            endpoint = self.resolver.resolve(self.api_name, client).endpoint
            conn = self._app_conn(endpoint, conns)
            if isinstance(query, str):
                conn.execute(query, params)
            else:
                with conn.transaction():
                    for q, p in query:
                        conn.execute(q, p)
        except Exception as exc:
            if endpoint in conns and getattr(conns[endpoint], "closed", False):
                conns.pop(endpoint, None)
            first = str(exc).splitlines()[0] if str(exc) else ""
            self._record(WriteRecord(write_id, kind, started, endpoint, False, (self.clock() - started) * 1000,
                                     f"{type(exc).__name__}: {first}", payload, client))
            return False
        self._record(WriteRecord(write_id, kind, started, endpoint, True, (self.clock() - started) * 1000, None,
                                 payload, client))
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
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-app") as pool:
                app = pool.submit(self._app_loop, conns)
                credit = 0.0
                last = self.clock()
                try:
                    while not self._stop.is_set() and self.clock() < deadline:
                        now = self.clock()
                        credit += (now - last) * self.config.write_rate
                        last = now
                        while credit >= 1.0:
                            credit -= 1.0
                            self._write_datapoint()
                        time.sleep(0.01)
                finally:
                    self._stop.set()
                app.result()
            for _ in range(self.config.max_in_flight):  # wait for every in-flight write to be journaled
                self._in_flight.acquire()
            for _ in range(self.config.max_in_flight):
                self._in_flight.release()
        finally:
            self.stats.finished = self.clock()
            self.stats.dns_lookups = getattr(self.resolver, "lookups", 0)
            for conn in conns.values():
                conn.close()
            for cluster in self._clusters:
                cluster.shutdown()
        return self.stats


class Resolver(Protocol):
    def resolve(self, name: str, client: str = "") -> Answer: ...


class StaticResolver:
    """Answers fixed endpoints without DNS: the load check drives the target directly."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.lookups = 0

    def resolve(self, name: str, client: str = "") -> Answer:
        return Answer(name, self.answers[name], 3600, 0.0)


def fleet_device_id(tenant_id: int, key: str) -> int:
    """A device id for a fleet-registered device: far above the generator's ids, stable per key."""
    return 9_000_000_000_000 + (uuid.uuid5(uuid.NAMESPACE_URL, f"fleet-dev-{tenant_id}-{key}").int % 10**12)


def tenant_profile(replica: PgEndpoint, tenant_id: int, limit: int) -> TenantProfile:
    """The tenant's first ``limit`` devices with their properties and rules, a model and users."""
    pairs = tenant_pairs(replica, tenant_id, limit)
    props = sorted({p for _, p in pairs})
    with replica.connect(autocommit=True) as conn:
        rules = [int(r[0]) for r in conn.execute(
            "SELECT rule_id FROM platform.rules WHERE property_id = ANY(%s) ORDER BY 1", (props,)).fetchall()]
        model = conn.execute("SELECT model_id FROM platform.devices WHERE tenant_id = %s ORDER BY device_id LIMIT 1",
                             (tenant_id,)).fetchone()
        users = [str(r[0]) for r in conn.execute(
            "SELECT user_id FROM platform.users WHERE tenant_id = %s ORDER BY user_id LIMIT 50", (tenant_id,)).fetchall()]
    return TenantProfile(pairs, rules, int(model[0]) if model else None, users)


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
