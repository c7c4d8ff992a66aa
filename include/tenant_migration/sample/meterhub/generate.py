"""meterhub's deterministic dataset (``tiny`` and ``demo`` presets): orgs of skewed sizes, each a
tree of sites (campus > building > floor > room) with meters, channels and alarms, invoices,
members and documents (one ~1 MB with a bytea attachment; platform templates with no org), and
in Cassandra each meter's readings (one meter's partition larger than a driver page) and daily
rollups, written with explicit write timestamps and TTLs, set elements revised later.

The same seed gives the same rows and cells, relative to the hour the data was generated in (the
readings must be recent to live under their TTLs). A preset that is already loaded, same seed, is
kept (``force`` regenerates).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from tenant_migration.sample.cassandra_load import _cql_statements, cassandra_session, close_session

HERE = Path(__file__).parent
SCHEMA_SQL, ROLES_SQL, SCHEMA_CQL = HERE / "schema.sql", HERE / "roles.sql", HERE / "schema.cql"
PG_TABLES = ("channel_alarms", "meter_channels", "meters", "sites", "invoices", "documents", "org_members", "orgs",
             "meter_models")
CQL_TABLES = ("readings", "daily_rollups")
CQL_TIMEOUT_S = 60.0
BIG_METER_ROWS_MIN = 5_500  # above the driver's default page (5,000 rows)
VERSION = 3  # of the rows this module writes: a dataset of an older version is made again


@dataclass(frozen=True)
class Preset:
    orgs: int
    branching: tuple[int, ...]  # children per level below each campus: buildings, floors, rooms
    meters_per_room: int
    readings_per_meter: int
    big_meter_readings: int
    rollup_days: int


PRESETS = {
    "tiny": Preset(orgs=6, branching=(2, 2, 2), meters_per_room=1, readings_per_meter=40, big_meter_readings=5_600,
                   rollup_days=5),
    "demo": Preset(orgs=12, branching=(3, 3, 3), meters_per_room=2, readings_per_meter=150, big_meter_readings=12_000,
                   rollup_days=10),
}
HANDLES = ("acme-energy", "borealis-power", "civic-grid", "delta-utilities", "empty-org", "fjord-heat",
           "granite-works", "harbor-lights", "ion-district", "juniper-farms", "kelvin-labs", "lumen-city")
EMPTY_ORG = 5  # an org with nothing but its own row
BIG_ORG = 2  # holds the meter whose readings partition spans several pages
MODELS = (("MX-100", "Metrix", 3), ("MX-300", "Metrix", 6), ("EV-9", "Evolt", 1), ("GRID-2", "Gridline", 12))


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def apply_pg_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(730031)")
        try:
            conn.execute(SCHEMA_SQL.read_text().encode())
            conn.execute(ROLES_SQL.read_text().encode())
            conn.execute("CREATE SCHEMA IF NOT EXISTS hub_meta")
            conn.execute("CREATE TABLE IF NOT EXISTS hub_meta.generation (id int PRIMARY KEY, preset text, seed int, "
                         "base timestamptz, counts jsonb)")
        finally:
            conn.execute("SELECT pg_advisory_unlock(730031)")


def apply_cql_schema(host: str, port: int) -> None:
    session = cassandra_session(host, port)
    try:
        for statement in _cql_statements(SCHEMA_CQL.read_text()):
            session.execute(statement, timeout=CQL_TIMEOUT_S)
        session.cluster.control_connection.wait_for_schema_agreement()
    finally:
        close_session(session)


def empty(pg_dsn: str, cql_host: str, cql_port: int) -> None:
    """Every meterhub table emptied (the target between runs; the source before a new dataset)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(f"hub.{t}" for t in PG_TABLES) + " RESTART IDENTITY CASCADE")
    session = cassandra_session(cql_host, cql_port)
    try:
        for table in CQL_TABLES:
            session.execute(f"TRUNCATE hub_metrics.{table}", timeout=CQL_TIMEOUT_S)
    finally:
        close_session(session)


def loaded(pg_dsn: str) -> dict[str, Any] | None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT preset, seed, base, counts FROM hub_meta.generation WHERE id = 1").fetchone()
    return None if row is None else {"preset": row[0], "seed": row[1], "base": row[2], "counts": row[3]}


def generate(preset: str, seed: int, pg_dsn: str, cql_host: str, cql_port: int, force: bool = False) -> dict[str, Any]:
    """Load the preset on the source (PostgreSQL as a superuser: identities assigned in order)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown meterhub preset {preset!r}; expected one of {sorted(PRESETS)}")
    apply_pg_schema(pg_dsn)
    apply_cql_schema(cql_host, cql_port)
    current = loaded(pg_dsn)
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    if current and not force and (current["preset"], current["seed"]) == (preset, seed) and \
            current["counts"].get("version") == VERSION and current["base"] > base - timedelta(days=20):
        return {**current, "reused": True}
    empty(pg_dsn, cql_host, cql_port)
    rng = random.Random(seed)
    p = PRESETS[preset]
    counts: dict[str, int] = {"version": VERSION}
    with psycopg.connect(pg_dsn) as conn:
        meters = _pg(conn, rng, p, base, counts)
        conn.execute("INSERT INTO hub_meta.generation VALUES (1, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
                     "preset = EXCLUDED.preset, seed = EXCLUDED.seed, base = EXCLUDED.base, counts = EXCLUDED.counts",
                     (preset, seed, base, json.dumps(counts)))
        conn.commit()
    _cql(cql_host, cql_port, rng, p, base, meters, counts)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE hub_meta.generation SET counts = %s WHERE id = 1", (json.dumps(counts),))
    return {"preset": preset, "seed": seed, "base": base, "counts": counts, "reused": False}


def _pg(conn: psycopg.Connection, rng: random.Random, p: Preset, base: datetime,
        counts: dict[str, int]) -> list[tuple[int, str, uuid.UUID, str]]:
    """The relational rows; returns every meter as (org, site_key, meter_uid, label)."""
    cur = conn.cursor()
    cur.executemany("INSERT INTO hub.meter_models VALUES (%s, %s, %s, %s)",
                    [(code, vendor, ch, json.dumps({"phases": ch % 4 or 1, "ip": "IP54"})) for code, vendor, ch in MODELS])
    meters: list[tuple[int, str, uuid.UUID, str]] = []
    n = {t: 0 for t in ("orgs", "org_members", "sites", "meters", "meter_channels", "channel_alarms", "invoices",
                        "documents")}
    # The big org's sites first: the identity's first values (-3, -2, -1, 0) are the migrated org's.
    for org in sorted(range(1, p.orgs + 1), key=lambda o: o != BIG_ORG):
        handle = HANDLES[org - 1]
        cur.execute("INSERT INTO hub.orgs VALUES (%s, %s, %s, %s, %s)",
                    (org, handle, handle.replace("-", " ").title(),
                     json.dumps({"tz": rng.choice(["Europe/Oslo", "UTC", "America/Chicago"]), "tier": org % 3}),
                     base - timedelta(days=400 - org)))
        n["orgs"] += 1
        if org == EMPTY_ORG:
            continue
        size = 1 + (2 if org == BIG_ORG else 0) + rng.randint(0, 1)  # campuses: skewed sizes
        for i in range(size + 2):
            cur.execute("INSERT INTO hub.org_members VALUES (%s, %s, %s, %s)",
                        (org, f"user{i}@{handle}.example", ["admin"] if i == 0 else ["viewer", "billing"][: 1 + i % 2],
                         None if i % 3 == 0 else base - timedelta(days=i)))
            n["org_members"] += 1
        for k in range(3 + org % 2):
            cur.execute("INSERT INTO hub.invoices (org_id, amount, issued_at, lines) VALUES (%s, %s, %s, %s)",
                        (org, f"{rng.randint(100, 99_999)}.{rng.randint(0, 99):02d}", base - timedelta(days=30 * k),
                         json.dumps([{"sku": "kwh", "qty": rng.randint(1, 9999), "note": None}])))
            n["invoices"] += 1
        for campus in range(size):
            meters += _site_tree(cur, rng, p, base, org, f"{handle}/c{campus}", None, 0, n)
        cur.execute("INSERT INTO hub.documents VALUES (%s, %s, %s, %s, %s, %s)",
                    (f"{handle}/contract.txt", org, f"Contract of {handle}.\n" + "§ terms apply.\n" * 20,
                     None, json.dumps({"lang": "en", "pages": 2}), base - timedelta(days=3)))
        n["documents"] += 1
        if org == BIG_ORG:  # a ~1 MB text and a bytea
            body = "".join(rng.choice("abcdefghij klmnopqrstuvwxyzæøå\n") for _ in range(1_048_576))
            cur.execute("INSERT INTO hub.documents VALUES (%s, %s, %s, %s, %s, %s)",
                        (f"{handle}/site-survey.txt", org, body, rng.randbytes(262_144), None, base - timedelta(days=1)))
            n["documents"] += 1
    for name in ("tariff-template.txt", "privacy-notice.txt", "onboarding.txt"):  # nobody's
        cur.execute("INSERT INTO hub.documents VALUES (%s, NULL, %s, NULL, %s, %s)",
                    (f"templates/{name}", f"Template {name}", json.dumps({"template": True}), base - timedelta(days=90)))
        n["documents"] += 1
    counts.update(n)
    return meters


def _site_tree(cur: psycopg.Cursor, rng: random.Random, p: Preset, base: datetime, org: int, key: str,
               parent: int | None, depth: int, n: dict[str, int]) -> list[tuple[int, str, uuid.UUID, str]]:
    kinds = ("campus", "building", "floor", "room")
    row = cur.execute(
        "INSERT INTO hub.sites (org_id, parent_site_id, site_key, name, location, area_m2) VALUES (%s, %s, %s, %s, %s, "
        "%s) RETURNING site_id",
        (org, parent, key, f"{kinds[depth]} {key.rsplit('/', 1)[-1]}",
         None if depth else [round(rng.uniform(-90, 90), 6), round(rng.uniform(-180, 180), 6)],
         None if depth == 3 and rng.random() < 0.3 else f"{rng.randint(10, 90_000)}.{rng.randint(0, 99):02d}"),
    ).fetchone()
    assert row is not None
    site_id = int(row[0])
    n["sites"] += 1
    if depth < len(p.branching):
        out = []
        for child in range(p.branching[depth]):
            out += _site_tree(cur, rng, p, base, org, f"{key}/{kinds[depth + 1][0]}{child}", site_id, depth + 1, n)
        return out
    meters = []
    for _ in range(p.meters_per_room):
        uid = _uuid(rng)
        code, _vendor, channels = rng.choice(MODELS)
        cur.execute("INSERT INTO hub.meters VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (uid, site_id, key, f"SN-{uid.hex[:10].upper()}", code, f"{rng.choice([1, 10, 0.5])}",
                     None if rng.random() < 0.2 else base - timedelta(days=rng.randint(1, 300)),
                     json.dumps({"interval_s": rng.choice([60, 600, 900]), "ct": [rng.randint(1, 5)], "fw": None})))
        n["meters"] += 1
        for ch in range(min(channels, 3)):
            cid = cur.execute("INSERT INTO hub.meter_channels (meter_uid, channel, unit, label) VALUES (%s, %s, %s, %s) "
                              "RETURNING channel_id", (uid, ch, rng.choice(["kWh", "kVArh", "A"]),
                                                       None if ch else "main")).fetchone()
            assert cid is not None
            n["meter_channels"] += 1
            for _a in range(rng.randint(0, 2)):
                cur.execute("INSERT INTO hub.channel_alarms (channel_id, threshold, severity, raised_at, note) "
                            "VALUES (%s, %s, %s, %s, %s)",
                            (cid[0], f"{rng.randint(1, 5000)}.{rng.randint(0, 9999):04d}", rng.choice(["low", "high"]),
                             None if rng.random() < 0.5 else base - timedelta(hours=rng.randint(1, 48)),
                             rng.choice([None, "check CT clamp", "tenant notified"])))
                n["channel_alarms"] += 1
        meters.append((org, key, uid, f"meter {uid.hex[:6]}"))
    return meters


def _cql(host: str, port: int, rng: random.Random, p: Preset, base: datetime,
         meters: list[tuple[int, str, uuid.UUID, str]], counts: dict[str, int]) -> None:
    from cassandra.concurrent import execute_concurrent_with_args

    session = cassandra_session(host, port)
    try:
        reading = session.prepare(
            "INSERT INTO hub_metrics.readings (site_key, meter_uid, ts, kwh, flags, phases, attrs) VALUES "
            "(?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ? AND TTL ?")
        label = session.prepare("INSERT INTO hub_metrics.readings (site_key, meter_uid, meter_label) VALUES (?, ?, ?) "
                                "USING TIMESTAMP ?")
        revise = session.prepare("UPDATE hub_metrics.readings USING TIMESTAMP ? SET flags = flags + ? "
                                 "WHERE site_key = ? AND meter_uid = ? AND ts = ?")
        rollup = session.prepare("INSERT INTO hub_metrics.daily_rollups (meter_uid, day, channel, total, peak) VALUES "
                                 "(?, ?, ?, ?, ?) USING TIMESTAMP ?")
        rows, revisions, rollups, labels = [], [], [], []
        big = next(m for m in meters if m[0] == BIG_ORG)
        for org, key, uid, name in meters:
            labels.append((key, uid, name, _micros(base - timedelta(days=2))))
            many = p.big_meter_readings if (org, key, uid) == big[:3] else p.readings_per_meter
            for i in range(many):
                ts = base - timedelta(minutes=5 * i)
                flags = {f for f in ("est", "gap", "peak") if rng.random() < 0.3} or None
                phases = None if rng.random() < 0.1 else [round(rng.uniform(0, 50), 3) for _ in range(3)]
                attrs = None if rng.random() < 0.5 else {"src": rng.choice(["ami", "manual"]), "q": str(rng.randint(0, 3))}
                ttl = 2_592_000 if rng.random() < 0.8 else rng.randint(86_400, 604_800)
                rows.append((key, uid, ts, round(rng.uniform(0, 100), 4), flags, phases, attrs, _micros(ts), ttl))
                if rng.random() < 0.1:  # a later correction: an element of its own write time
                    revisions.append((_micros(ts) + 1_000_000, {"revised"}, key, uid, ts))
            for d in range(p.rollup_days):
                day = (base - timedelta(days=d)).date()
                for ch in range(3):
                    # Written at the day's end, or now for today's: never in the future (the drain
                    # would take a future write time for a write after the flip).
                    closed = min(datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=23), base)
                    rollups.append((uid, day, ch, round(rng.uniform(0, 2400), 3), round(rng.uniform(0, 60), 3),
                                    _micros(closed)))
        for stmt, args in ((label, labels), (reading, rows), (revise, revisions), (rollup, rollups)):
            for ok, result in execute_concurrent_with_args(session, stmt, args, concurrency=64, raise_on_first_error=True):
                assert ok, result
        counts.update({"readings": len(rows), "revisions": len(revisions), "daily_rollups": len(rollups),
                       "big_partition_rows": p.big_meter_readings})
    finally:
        close_session(session)


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


