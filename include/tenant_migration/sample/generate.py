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
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration.sample.cassandra_load import (  # noqa: F401  (re-exported: the old home of these names)
    CQL_TIMEOUT_S,
    DATAPOINT_INSERT,
    DEFAULT_CONCURRENCY,
    EVENT_INSERT,
    LATEST_INSERT,
    RETRIES,
    SCHEMA_CQL,
    _batches,
    _cassandra_session,
    _cassandra_spot_check,
    _close,
    _cql_statements,
    _date_value,
    _load_cassandra,
    _send,
    _truncate_cassandra,
    _write_cassandra_part,
    apply_cql_schema,
    cassandra_session,
    close_session,
    serialize_column,
)
from tenant_migration.sample.data import (
    BIG_TENANT_ID,
    CASSANDRA_TABLES,
    COLUMNS,
    EMPTY_TENANT_ID,
    PG_TABLES,
    PRESETS,
    SHARED_TABLES,
    TENANT_COUNT,
    TENANT_TABLES,
    TEST_POOL_SLUG,
    TEST_POOL_TENANT_ID,
    Dataset,
    Preset,
    TenantPlan,
    build_dataset,
    plan_tenants,
)
from tenant_migration.sample.expected import expected_counts, table_totals, tenant_sizes
from tenant_migration.sample.render import copy_blocks
from tenant_migration.sample.telemetry import (
    day_buckets,
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
ROLES: tuple[str, ...] = ("migration_reader", "migration_writer", "migration_operator", "platform_app")
LOCK_KEY = 0x5A4D_1E60

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
