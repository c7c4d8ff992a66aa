"""Writing the sample platform's Cassandra data: its schema, then the telemetry chunks as unlogged
single-partition batches with their TTLs and write times, at a bounded concurrency with retries,
and the spot check that finds generated data still there (``sample.generate`` drives it)."""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from tenant_migration.sample.data import (
    BIG_TENANT_ID,
    CASSANDRA_TABLES,
    MAX_BATCH_ROWS,
    Dataset,
    Preset,
    build_dataset,
)
from tenant_migration.sample.telemetry import (
    Rows,
    cassandra_chunk,
    cassandra_chunk_count,
    cql_date,
)

log = logging.getLogger(__name__)


SCHEMA_CQL = Path(__file__).resolve().parent / "cql" / "schema.cql"


DEFAULT_CONCURRENCY = 128
CQL_TIMEOUT_S = 120.0
RETRIES = 5


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
