"""Load the deterministic sample data into the shared platform (PostgreSQL + Cassandra), and prepare
an empty target.

The rows themselves come from ``tenant_migration.sample.data`` (pure); this module only moves them:

* PostgreSQL through ``COPY ... FROM STDIN`` in one transaction (truncate + all tables), with
  ``session_replication_role = replica`` when allowed so that foreign-key and registration triggers do
  not run per row (the data is consistent by construction); then ``ANALYZE``.
* Cassandra through prepared INSERTs grouped into single-partition UNLOGGED batches of at most
  ``MAX_BATCH_ROWS`` rows, sent ``concurrency`` at a time; failed batches are retried (the writes are
  idempotent: fixed values, fixed writetime). ``processes=2`` splits the chunks between two processes.

Idempotence: each run is recorded in ``platform_meta.generation`` on the source. A run is reused (nothing
written) when the newest record has the same preset and seed, is complete, has not started to expire
(``valid_until``) and a cheap spot check finds the data still there; otherwise the platform tables and
the Cassandra tables are truncated and everything is regenerated. Concurrent calls are serialised by an
advisory lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from tenant_migration.sample.data import (
    BIG_TENANT_ID,
    CASSANDRA_TABLES,
    COLUMNS,
    EMPTY_TENANT_ID,
    MAX_BATCH_ROWS,
    PG_TABLES,
    PRESETS,
    SHARED_TABLES,
    TENANT_COUNT,
    TENANT_TABLES,
    TEST_POOL_SLUG,
    TEST_POOL_TENANT_ID,
    Dataset,
    Preset,
    Rows,
    TenantPlan,
    build_dataset,
    cassandra_chunk,
    cassandra_chunk_count,
    copy_blocks,
    cql_date,
    day_buckets,
    expected_counts,
    plan_tenants,
    table_totals,
    tenant_sizes,
    valid_until,
)

__all__ = [
    "BIG_TENANT_ID",
    "CASSANDRA_TABLES",
    "EMPTY_TENANT_ID",
    "PG_TABLES",
    "PRESETS",
    "ROLES",
    "SHARED_TABLES",
    "TENANT_TABLES",
    "TEST_POOL_SLUG",
    "TEST_POOL_TENANT_ID",
    "GenerationResult",
    "Preset",
    "TenantPlan",
    "apply_cql_schema",
    "apply_pg_schema",
    "apply_roles",
    "apply_schema_to_target",
    "cassandra_session",
    "close_session",
    "expected_counts",
    "generate",
    "main",
    "plan_tenants",
    "reset_target",
    "tenant_sizes",
]

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).resolve().parent
SCHEMA_SQL = SAMPLE_DIR / "sql" / "schema.sql"
ROLES_SQL = SAMPLE_DIR / "sql" / "roles.sql"
SCHEMA_CQL = SAMPLE_DIR / "cql" / "schema.cql"
ROLES: tuple[str, ...] = ("migration_reader", "migration_writer", "migration_operator", "platform_app")
LOCK_KEY = 0x5A4D_1E60
DEFAULT_CONCURRENCY = 128
CQL_TIMEOUT_S = 120.0
RETRIES = 5

META_DDL = """
CREATE SCHEMA IF NOT EXISTS platform_meta;
CREATE TABLE IF NOT EXISTS platform_meta.generation (
    run_id            bigserial PRIMARY KEY,
    preset            text NOT NULL,
    seed              bigint NOT NULL,
    generated_on      date NOT NULL,
    day_buckets       date[] NOT NULL,
    cassandra_host    text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at      timestamptz,
    valid_until       timestamptz NOT NULL,
    counts            jsonb,
    tenant_counts     jsonb,
    skipped_expired   bigint,
    pg_seconds        double precision,
    cassandra_seconds double precision
);
COMMENT ON TABLE platform_meta.generation IS
    'Runs of tenant_migration.sample.generate; the newest complete row describes the data in platform.*';
"""

DATAPOINT_INSERT = (
    "INSERT INTO telemetry.datapoints (device_id, property_id, day, ts, value, quality) "
    "VALUES (?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
)
LATEST_INSERT = (
    "INSERT INTO telemetry.latest_values (device_id, property_id, ts, value) VALUES (?, ?, ?, ?) USING TIMESTAMP ?"
)
EVENT_INSERT = (
    "INSERT INTO telemetry.connection_events (device_id, day, ts, event, remote_ip) "
    "VALUES (?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
)


@dataclass(frozen=True)
class GenerationResult:
    """What a ``generate`` call found or wrote."""

    preset: str
    seed: int
    reused: bool
    reason: str
    generated_on: date
    counts: dict[str, int]
    tenant_counts: dict[int, dict[str, int]]
    pg_seconds: float = 0.0
    cassandra_seconds: float = 0.0
    skipped_expired: int = 0
    day_buckets: tuple[date, ...] = field(default_factory=tuple)

    @property
    def pg_rows(self) -> int:
        return sum(self.counts.get(t, 0) for t in PG_TABLES)

    @property
    def cassandra_rows(self) -> int:
        return sum(self.counts.get(t, 0) for t in CASSANDRA_TABLES)


# ------------------------------------------------------------------------------------ PostgreSQL


def _resolve(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}") from None


def _pg_schema_missing(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass('platform.' || t) IS NULL", (list(PG_TABLES),)
    ).fetchall()
    return [r[0] for r in rows]


def apply_pg_schema(conn: psycopg.Connection[Any], *, only_if_missing: bool = True) -> bool:
    """Run ``schema.sql`` (idempotent) in one transaction; returns whether it ran.

    With ``only_if_missing`` it runs only when a platform table is missing, because re-running it on a
    live source recreates triggers (short exclusive locks) for nothing.
    """
    if only_if_missing and not _pg_schema_missing(conn):
        return False
    script = f"SELECT pg_advisory_xact_lock({LOCK_KEY + 1});\n" + SCHEMA_SQL.read_text()
    conn.execute(script.encode())
    conn.execute("RESET search_path")
    return True


def _truncate_pg(conn: psycopg.Connection[Any]) -> None:
    """Truncate all platform tables together, without CASCADE: a foreign key from outside the platform
    schema makes this fail loudly rather than silently emptying someone else's table."""
    tables = sql.SQL(", ").join(sql.Identifier("platform", t) for t in PG_TABLES)
    conn.execute(sql.SQL("TRUNCATE {}").format(tables))


def _load_pg(conn: psycopg.Connection[Any], ds: Dataset) -> dict[str, int]:
    """Truncate and COPY every platform table in one transaction; returns rows per table."""
    counts: dict[str, int] = {}
    with conn.transaction():
        try:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            log.warning("cannot set session_replication_role: loading with triggers (slower)")
        _truncate_pg(conn)
        with conn.cursor() as cur:
            for name in PG_TABLES:
                started = time.perf_counter()
                stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier("platform", name), sql.SQL(", ").join(map(sql.Identifier, COLUMNS[name]))
                )
                with cur.copy(stmt) as copy:
                    for block in copy_blocks(ds, name):
                        copy.write(block)
                counts[name] = len(ds.tables[name])
                log.info("  %-22s %9d rows %6.2fs", name, counts[name], time.perf_counter() - started)
    started = time.perf_counter()
    for name in PG_TABLES:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier("platform", name)))
    log.info("  analyze %.2fs", time.perf_counter() - started)
    return counts


def _ensure_meta(conn: psycopg.Connection[Any]) -> None:
    conn.execute((f"SELECT pg_advisory_xact_lock({LOCK_KEY + 2});" + META_DDL).encode())


def _pg_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {}, count(*) FROM {}").format(sql.Literal(t), sql.Identifier("platform", t)) for t in PG_TABLES
    )
    return {name: int(n) for name, n in conn.execute(query).fetchall()}


def apply_roles(dsn: str, passwords: Mapping[str, str]) -> None:
    """Create the least-privilege roles (``roles.sql``) and set their passwords.

    ``passwords`` maps role name (see ``ROLES``) to password; roles left out keep theirs. Passwords are
    sent as literals through psycopg, never on a command line. The schema is applied first when missing
    because ``roles.sql`` grants on its tables.
    """
    unknown = set(passwords) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; expected some of {ROLES}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        apply_pg_schema(conn)
        conn.execute((f"SELECT pg_advisory_xact_lock({LOCK_KEY + 3});\n" + ROLES_SQL.read_text()).encode())
        for role, password in passwords.items():
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


# ------------------------------------------------------------------------------------ Cassandra


def _cassandra_session(host: str, port: int) -> Any:
    """A session bound to the one node (no token-aware round robin across unknown DCs)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([host]), request_timeout=CQL_TIMEOUT_S)
    cluster = Cluster(
        contact_points=[host],
        port=port,
        protocol_version=5,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=30,
    )
    return cluster.connect()


def _close(session: Any) -> None:
    session.cluster.shutdown()


cassandra_session = _cassandra_session
close_session = _close


def _cql_statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def apply_cql_schema(session: Any) -> None:
    """Run ``schema.cql`` (idempotent: IF NOT EXISTS everywhere) and wait for schema agreement."""
    for statement in _cql_statements(SCHEMA_CQL.read_text()):
        session.execute(statement, timeout=CQL_TIMEOUT_S)
    session.cluster.control_connection.wait_for_schema_agreement()


def _truncate_cassandra(session: Any) -> None:
    for table in CASSANDRA_TABLES:
        session.execute(f"TRUNCATE telemetry.{table}", timeout=CQL_TIMEOUT_S)


def _send(session: Any, batches: list[Any], concurrency: int) -> None:
    """Send batches concurrently, retrying failed ones (idempotent writes) with a growing pause."""
    from cassandra.concurrent import execute_concurrent

    pending = batches
    for attempt in range(RETRIES + 1):
        results = execute_concurrent(
            session, ((b, None) for b in pending), concurrency=concurrency, raise_on_first_error=False
        )
        failed = [(b, r.result_or_exc) for b, r in zip(pending, results, strict=True) if not r.success]
        if not failed:
            return
        if attempt == RETRIES:
            raise RuntimeError(f"{len(failed)} Cassandra batches failed after {RETRIES} retries: {failed[0][1]!r}")
        log.warning("retrying %d failed Cassandra batches (%r)", len(failed), failed[0][1])
        time.sleep(0.5 * 2**attempt)
        pending = [b for b, _ in failed]


WIRE_FORMATS: dict[str, str] = {
    "device_id": ">i8",
    "property_id": ">i8",
    "day": ">u4",
    "ts": ">i8",
    "value": ">f8",
    "quality": "i1",
    "ttl": ">i4",
    "writetime": ">i8",
    "event": "text",
    "remote_ip": "text",
}


def serialize_column(name: str, values: np.ndarray) -> list[bytes]:
    """Native-protocol encoding of one column, vectorised: what the driver's bind() would produce
    value by value (big-endian fixed width; date offset by 2**31 already; text as UTF-8)."""
    fmt = WIRE_FORMATS[name]
    if fmt == "text":
        return [v.encode() for v in values.tolist()]
    buf = np.ascontiguousarray(values).astype(fmt).tobytes()
    width = np.dtype(fmt).itemsize
    return [buf[i:i + width] for i in range(0, len(buf), width)]


def _batches(prepared: Any, rows: Rows) -> list[Any]:
    """Single-partition UNLOGGED batches of at most MAX_BATCH_ROWS rows.

    Values are serialised in bulk and handed to the batch as already-encoded parameters, skipping the
    driver's per-row bind() (about 6x less client CPU, which matters on a 2-core machine shared with
    Cassandra). When the driver lacks that internal method, the public bind path is used.
    """
    from cassandra.query import BatchStatement, BatchType

    fast = hasattr(BatchStatement, "_add_statement_and_params")
    if fast:
        encoded = list(zip(*(serialize_column(n, c) for n, c in rows.columns.items()), strict=True))
    else:
        encoded = rows.tuples()
    out = []
    for start, end in rows.partitions():
        for lo in range(start, end, MAX_BATCH_ROWS):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            if fast:
                add = batch._add_statement_and_params
                for params in encoded[lo:min(end, lo + MAX_BATCH_ROWS)]:
                    add(True, prepared.query_id, params)
            else:
                for params in encoded[lo:min(end, lo + MAX_BATCH_ROWS)]:
                    batch.add(prepared, params)
            out.append(batch)
    return out


def _write_cassandra_part(
    host: str, port: int, preset: Preset, seed: int, today: date, part: int, parts: int, concurrency: int
) -> tuple[dict[str, int], int]:
    """Write the chunks ``c % parts == part``; returns (rows per table, rows skipped as expired).

    Top-level so that a spawned worker process can run it.
    """
    ds = build_dataset(preset, seed)
    session = _cassandra_session(host, port)
    try:
        dp, lv, ce = (session.prepare(q) for q in (DATAPOINT_INSERT, LATEST_INSERT, EVENT_INSERT))
        counts = dict.fromkeys(CASSANDRA_TABLES, 0)
        skipped = 0
        for c in range(part, cassandra_chunk_count(ds), parts):
            chunk = cassandra_chunk(ds, c, today)
            statements = {"datapoints": dp, "latest_values": lv, "connection_events": ce}
            batches: list[Any] = []
            for table, rows in chunk.tables().items():
                batches += _batches(statements[table], rows)
                counts[table] += len(rows)
            _send(session, batches, concurrency)
            skipped += chunk.skipped_expired
        return counts, skipped
    finally:
        _close(session)


def _load_cassandra(
    host: str, port: int, preset: Preset, seed: int, today: date, concurrency: int, processes: int
) -> tuple[dict[str, int], int]:
    if processes <= 1:
        return _write_cassandra_part(host, port, preset, seed, today, 0, 1, concurrency)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        parts = pool.starmap(
            _write_cassandra_part,
            [(host, port, preset, seed, today, p, processes, concurrency) for p in range(processes)],
        )
    counts = dict.fromkeys(CASSANDRA_TABLES, 0)
    for part_counts, _ in parts:
        for name, n in part_counts.items():
            counts[name] += n
    return counts, sum(s for _, s in parts)


def _cassandra_spot_check(session: Any, ds: Dataset, buckets: Sequence[date]) -> str | None:
    """None when the anchor partitions of the big tenant hold what was generated, else what is off."""
    tel = ds.telemetry
    idx = int((tel.device_tenant == BIG_TENANT_ID).argmax())
    device = int(tel.device_id[idx])
    props = tel.prop_id[tel.prop_device_id == device]
    last = cql_date(buckets[-1])
    checks = (
        ("latest_values", "SELECT count(*) FROM telemetry.latest_values WHERE device_id = %s", (device,), len(props)),
        ("datapoints",
         "SELECT count(*) FROM telemetry.datapoints WHERE device_id = %s AND property_id = %s AND day = %s",
         (device, int(props[0]), _date_value(last)), ds.preset.points_per_day),
        ("connection_events", "SELECT count(*) FROM telemetry.connection_events WHERE device_id = %s AND day = %s",
         (device, _date_value(last)), ds.preset.events_per_day),
    )
    for table, query, params, expected in checks:
        found = session.execute(query, params, timeout=CQL_TIMEOUT_S).one()[0]
        if found != expected:
            return f"telemetry.{table} of device {device} has {found} rows instead of {expected}"
    return None


def _date_value(raw: int) -> Any:
    """A driver Date from the raw (offset) encoding, for query parameters."""
    from cassandra.util import Date

    return Date(raw - 2**31)


# ------------------------------------------------------------------------------------ generate


def _latest_run(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    cur = conn.execute(
        "SELECT run_id, preset, seed, generated_on, day_buckets, completed_at, valid_until, counts, tenant_counts,"
        " skipped_expired, pg_seconds, cassandra_seconds FROM platform_meta.generation ORDER BY run_id DESC LIMIT 1"
    )
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d.name for d in cur.description or ()], row, strict=True))


def _why_not_reusable(
    conn: psycopg.Connection[Any], session: Any, run: dict[str, Any] | None, preset: Preset, seed: int
) -> str | None:
    if run is None:
        return "nothing generated yet"
    if (run["preset"], run["seed"]) != (preset.name, seed):
        return f"source holds preset {run['preset']} seed {run['seed']}"
    if run["completed_at"] is None:
        return f"run {run['run_id']} was interrupted"
    if datetime.now(UTC) >= run["valid_until"]:
        return f"generated data started to expire at {run['valid_until']:%Y-%m-%d %H:%M}"
    live = _pg_counts(conn)
    for name in PG_TABLES:
        if live.get(name, 0) < run["counts"].get(name, 0):
            return f"platform.{name} has {live.get(name, 0)} rows, {run['counts'][name]} were generated"
    return _cassandra_spot_check(session, build_dataset(preset, seed), run["day_buckets"])


def _tenant_counts_from_json(raw: Mapping[str, Mapping[str, int]]) -> dict[int, dict[str, int]]:
    return {int(t): dict(per) for t, per in raw.items()}


def generate(
    preset: str | Preset,
    seed: int,
    pg_dsn: str,
    cassandra_host: str,
    cassandra_port: int = 9042,
    *,
    force: bool = False,
    today: date | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    processes: int = 1,
) -> GenerationResult:
    """Make the source hold exactly the sample data of ``(preset, seed)``; see the module docstring.

    ``today`` fixes the day the datapoint buckets are relative to (default: the current UTC date).
    ``force`` regenerates even when the recorded run could be reused.
    """
    p = _resolve(preset)
    today = today or datetime.now(UTC).date()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        if apply_pg_schema(conn):
            log.info("applied schema.sql")
        _ensure_meta(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        session = _cassandra_session(cassandra_host, cassandra_port)
        try:
            apply_cql_schema(session)
            run = _latest_run(conn)
            why = "forced" if force else _why_not_reusable(conn, session, run, p, seed)
            if why is None and run is not None:
                log.info("reusing run %s (%s seed %s of %s)", run["run_id"], p.name, seed, run["generated_on"])
                return GenerationResult(
                    preset=p.name,
                    seed=seed,
                    reused=True,
                    reason="same preset and seed already complete",
                    generated_on=run["generated_on"],
                    counts=dict(run["counts"]),
                    tenant_counts=_tenant_counts_from_json(run["tenant_counts"]),
                    pg_seconds=run["pg_seconds"],
                    cassandra_seconds=run["cassandra_seconds"],
                    skipped_expired=run["skipped_expired"],
                    day_buckets=tuple(run["day_buckets"]),
                )
            reason = why or "regenerating"
            log.info("generating %s seed %s: %s", p.name, seed, reason)
            buckets = day_buckets(p, today)
            run_id = conn.execute(
                "INSERT INTO platform_meta.generation (preset, seed, generated_on, day_buckets, cassandra_host,"
                " valid_until) VALUES (%s, %s, %s, %s, %s, %s) RETURNING run_id",
                (p.name, seed, today, list(buckets), f"{cassandra_host}:{cassandra_port}", valid_until(p, seed, today)),
            ).fetchone()[0]  # type: ignore[index]

            started = time.perf_counter()
            ds = build_dataset(p, seed)
            counts = _load_pg(conn, ds)
            pg_seconds = time.perf_counter() - started
            log.info("PostgreSQL: %d rows in %.1fs", sum(counts.values()), pg_seconds)

            started = time.perf_counter()
            _truncate_cassandra(session)
            cass_counts, skipped = _load_cassandra(
                cassandra_host, cassandra_port, p, seed, today, concurrency, processes
            )
            cassandra_seconds = time.perf_counter() - started
            total = sum(cass_counts.values())
            log.info("Cassandra: %d rows in %.1fs (%.0f rows/s)", total, cassandra_seconds,
                     total / max(cassandra_seconds, 1e-9))
            counts.update(cass_counts)
            tenant_counts = expected_counts(p, seed)
            conn.execute(
                "UPDATE platform_meta.generation SET completed_at = clock_timestamp(), counts = %s, tenant_counts = %s,"
                " skipped_expired = %s, pg_seconds = %s, cassandra_seconds = %s WHERE run_id = %s",
                (json.dumps(counts), json.dumps(tenant_counts), skipped, pg_seconds, cassandra_seconds, run_id),
            )
            return GenerationResult(
                preset=p.name,
                seed=seed,
                reused=False,
                reason=reason,
                generated_on=today,
                counts=counts,
                tenant_counts=tenant_counts,
                pg_seconds=pg_seconds,
                cassandra_seconds=cassandra_seconds,
                skipped_expired=skipped,
                day_buckets=buckets,
            )
        finally:
            _close(session)
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


# ------------------------------------------------------------------------------------ target


def reset_target(target_pg_dsn: str, target_cassandra_host: str, target_cassandra_port: int = 9042) -> None:
    """Empty the target: every platform table (shared ones too) and every telemetry table."""
    with psycopg.connect(target_pg_dsn, autocommit=True) as conn:
        _truncate_pg(conn)
    session = _cassandra_session(target_cassandra_host, target_cassandra_port)
    try:
        _truncate_cassandra(session)
    finally:
        _close(session)


def apply_schema_to_target(
    target_pg_dsn: str, target_cassandra_host: str, target_cassandra_port: int = 9042
) -> None:
    """Give the target the source's schemas (always re-applied: the target has no traffic), then empty it."""
    with psycopg.connect(target_pg_dsn, autocommit=True) as conn:
        apply_pg_schema(conn, only_if_missing=False)
    session = _cassandra_session(target_cassandra_host, target_cassandra_port)
    try:
        apply_cql_schema(session)
    finally:
        _close(session)
    reset_target(target_pg_dsn, target_cassandra_host, target_cassandra_port)


# ------------------------------------------------------------------------------------ CLI


def format_counts(result: GenerationResult) -> str:
    """Per-table row counts and timings, one line each."""
    lines = [f"preset {result.preset} seed {result.seed}: "
             f"{'reused' if result.reused else 'generated'} ({result.reason}); days {', '.join(map(str, result.day_buckets))}"]
    for name in (*PG_TABLES, *CASSANDRA_TABLES):
        lines.append(f"  {name:<22} {result.counts.get(name, 0):>10,}")
    lines.append(f"  {'PostgreSQL total':<22} {result.pg_rows:>10,}  {result.pg_seconds:7.1f}s")
    rate = result.cassandra_rows / result.cassandra_seconds if result.cassandra_seconds else 0.0
    lines.append(f"  {'Cassandra total':<22} {result.cassandra_rows:>10,}  {result.cassandra_seconds:7.1f}s"
                 f"  ({rate:,.0f} rows/s)")
    if result.skipped_expired:
        lines.append(f"  skipped as already expired: {result.skipped_expired}")
    return "\n".join(lines)


def format_summary(preset: Preset, seed: int, tenant_counts: Mapping[int, Mapping[str, int]]) -> str:
    """Per-tenant row counts: one line per tenant, with its share of all tenant rows."""
    plans = {p.tenant_id: p for p in plan_tenants(preset, seed)}
    short = {"device_registrations": "regs", "device_shares": "shares", "rule_actions": "actions",
             "connection_events": "events", "latest_values": "latest", "tenant_settings": "settings"}
    names = [t for t in (*TENANT_TABLES, *CASSANDRA_TABLES) if t not in ("tenants", "tenant_settings")]
    totals = {t: sum(per.values()) for t, per in tenant_counts.items() if t > 0}
    grand = sum(totals.values()) or 1
    head = f"{'id':>3} {'slug':<20} {'plan':<10}" + "".join(f" {short.get(n, n)[:10]:>10}" for n in names)
    lines = [head + f" {'total':>10} {'share':>6}"]
    for t in range(1, TENANT_COUNT + 1):
        per = tenant_counts.get(t, {})
        cells = "".join(f" {per.get(n, 0):>10,}" for n in names)
        lines.append(f"{t:>3} {plans[t].slug:<20} {plans[t].plan:<10}{cells} {totals.get(t, 0):>10,}"
                     f" {100 * totals.get(t, 0) / grand:5.1f}%")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tenant_migration.sample.generate",
        description="Generate the deterministic sample data of the shared IoT platform (idempotent).",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pg-dsn", help="superuser DSN of the source primary")
    parser.add_argument("--cassandra-host", default="127.0.0.2")
    parser.add_argument("--cassandra-port", type=int, default=9042)
    parser.add_argument("--force", action="store_true", help="regenerate even if the same data is there")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--processes", type=int, default=1, help="Cassandra writer processes")
    parser.add_argument("--summary", action="store_true", help="print per-tenant row counts")
    parser.add_argument("--predict", action="store_true", help="print expected counts only; no database")
    parser.add_argument("--prepare-target", action="store_true",
                        help="apply the schemas to the target and empty it (needs --target-*)")
    parser.add_argument("--target-pg-dsn")
    parser.add_argument("--target-cassandra-host", default="127.0.0.3")
    parser.add_argument("--target-cassandra-port", type=int, default=9042)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    preset = PRESETS[args.preset]

    if args.predict:
        counts = expected_counts(preset, args.seed)
        for name, n in table_totals(counts).items():
            print(f"  {name:<22} {n:>10,}")
        print(format_summary(preset, args.seed, counts))
        return 0
    if args.prepare_target:
        if not args.target_pg_dsn:
            parser.error("--prepare-target needs --target-pg-dsn")
        started = time.perf_counter()
        apply_schema_to_target(args.target_pg_dsn, args.target_cassandra_host, args.target_cassandra_port)
        print(f"target schemas applied and emptied in {time.perf_counter() - started:.1f}s")
        if not args.pg_dsn:
            return 0
    if not args.pg_dsn:
        parser.error("--pg-dsn is required")
    result = generate(preset, args.seed, args.pg_dsn, args.cassandra_host, args.cassandra_port,
                      force=args.force, concurrency=args.concurrency, processes=args.processes)
    print(format_counts(result))
    if args.summary:
        print(format_summary(preset, args.seed, result.tenant_counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
