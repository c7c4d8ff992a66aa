"""The ledger: runs, chunks, gates and events in the ``tm_control`` schema on the target.

Design note: the ledger is the single source of truth for progress. A chunk is ``done`` only when
its rows and its ledger row were committed in the same target transaction (see
``postgres.copy``), so a retry, a manual clear or a crash leaves either the complete old or the
complete new chunk, and a re-run of the same run id redoes exactly the chunks not ``done``.
A run is bound to a context fingerprint (source, target, tenant map): resuming it against
anything else is refused. Once the replica is detached, the run is also bound to that snapshot
(its detach LSN): a chunk copied from another snapshot would mix two points in time, so a resume
against a replica that has moved on is refused too (``record_detach``, ``check_snapshot``).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from tenant_migration import keycodec

_CREATE = (Path(__file__).parent / "sql" / "create_ledger.sql").read_text()


class ChunkStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class LedgerError(RuntimeError):
    """The ledger refuses an operation (a second live run, a foreign context)."""


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    engine: str
    table_name: str
    bounds: dict[str, Any]


def context_fingerprint(**parts: str) -> str:
    """A stable digest of what a run is bound to (no secrets go in: labels only)."""
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ensure_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute(_CREATE)


def start_run(conn: psycopg.Connection, run_id: str, tenant_id: int, fingerprint: str, spec: dict[str, Any]) -> bool:
    """Register ``run_id`` or resume it. Returns True when the run is new.

    Refuses a second live run for the tenant and a resume under a different context.
    """
    ensure_schema(conn)
    with conn.transaction():
        row = conn.execute(
            "SELECT tenant_id, context_fingerprint, status FROM tm_control.runs WHERE run_id = %s FOR UPDATE",
            (run_id,),
        ).fetchone()
        if row is not None:
            if row[0] != tenant_id or row[1] != fingerprint:
                raise LedgerError(
                    f"run {run_id} was started for tenant {row[0]} with context {row[1]}; "
                    f"refusing to resume it for tenant {tenant_id} with context {fingerprint}"
                )
            conn.execute(
                "UPDATE tm_control.runs SET status = 'running', finished_at = NULL WHERE run_id = %s",
                (run_id,),
            )
            return False
        other = conn.execute(
            "SELECT run_id FROM tm_control.runs WHERE tenant_id = %s AND status = 'running'", (tenant_id,)
        ).fetchone()
        if other is not None:
            raise LedgerError(
                f"tenant {tenant_id} already has a live migration run '{other[0]}'; finish or abort it "
                "(see the runbook: Abort) before starting another"
            )
        conn.execute(
            "INSERT INTO tm_control.runs (run_id, tenant_id, status, context_fingerprint, spec) "
            "VALUES (%s, %s, 'running', %s, %s)",
            (run_id, tenant_id, fingerprint, Jsonb(spec)),
        )
        return True


def finish_run(conn: psycopg.Connection, run_id: str, status: str) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE tm_control.runs SET status = %s, finished_at = clock_timestamp() WHERE run_id = %s",
            (status, run_id),
        )


def record_detach(conn: psycopg.Connection, run_id: str, lsn: str, commit_time: Any, allow_later: bool = False) -> None:
    """Bind the run to the replica's snapshot.

    Detaching again at the same LSN is a no-op. At a later LSN (the replica was reattached by a
    teardown and a cleared task detached it again) it is accepted only with ``allow_later``: the
    caller vouches that change capture replays every change from the FIRST detach point, so chunks
    copied from either snapshot converge (see ADR 4). ``detach_lsn`` keeps the first point,
    ``snapshot_lsn`` the one chunks copy from now. An earlier LSN is always refused.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT detach_lsn::text, COALESCE(snapshot_lsn, detach_lsn)::text, "
            "COALESCE(snapshot_lsn, detach_lsn) = %s::pg_lsn, COALESCE(snapshot_lsn, detach_lsn) < %s::pg_lsn "
            "FROM tm_control.runs WHERE run_id = %s FOR UPDATE",
            (lsn, lsn, run_id),
        ).fetchone()
        if row is not None and row[0] is not None and not row[2] and not (allow_later and row[3]):
            raise LedgerError(
                f"run {run_id} copies from the replica snapshot at LSN {row[1]}; the replica is now at {lsn}. "
                "Refusing to mix snapshots: start a new run (the old one can be aborted)."
            )
        conn.execute(
            "UPDATE tm_control.runs SET detach_lsn = COALESCE(detach_lsn, %s::pg_lsn), snapshot_lsn = %s::pg_lsn, "
            "detach_commit_time = COALESCE(detach_commit_time, %s) WHERE run_id = %s",
            (lsn, lsn, commit_time, run_id),
        )


def check_snapshot(conn: psycopg.Connection, run_id: str, replica_lsn: str | None) -> None:
    """Refuse to copy for ``run_id`` from a replica that is not at the run's current snapshot LSN.

    ``replica_lsn`` is the replica's current replay LSN (None when it is not a paused standby).
    A run that was never detached (benchmarks, tests of the copier alone) is not bound.
    """
    row = conn.execute(
        "SELECT COALESCE(snapshot_lsn, detach_lsn)::text, COALESCE(snapshot_lsn, detach_lsn) = %s::pg_lsn "
        "FROM tm_control.runs WHERE run_id = %s",
        (replica_lsn, run_id),
    ).fetchone()
    if row is None:
        raise LedgerError(f"run {run_id} is not registered in the ledger (start_run first)")
    if row[0] is not None and not row[1]:
        raise LedgerError(
            f"run {run_id} was planned on the replica snapshot at LSN {row[0]}, but the replica is "
            f"{'not detached' if replica_lsn is None else 'at ' + replica_lsn}; refusing to copy from another snapshot"
        )


def run_known(conn: psycopg.Connection, run_id: str) -> bool:
    """``run_id`` is registered in the ledger (False when there is no ledger yet); nothing is created."""
    row = conn.execute("SELECT to_regclass('tm_control.runs') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return False
    return conn.execute("SELECT 1 FROM tm_control.runs WHERE run_id = %s", (run_id,)).fetchone() is not None


def run_spec(conn: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """The params (and platform profile) ``run_id`` was started with; {} for an unknown run. Creates nothing."""
    if not run_known(conn, run_id):
        return {}
    row = conn.execute("SELECT spec FROM tm_control.runs WHERE run_id = %s", (run_id,)).fetchone()
    return dict(row[0]) if row and row[0] else {}


def run_slug(conn: psycopg.Connection, run_id: str) -> str | None:
    """The tenant's slug as the run's preflight found it (a rollback's ``<run>/back`` reads its
    migration's); None before a preflight passed, or without a ledger. Creates nothing."""
    row = conn.execute("SELECT to_regclass('tm_control.events') IS NOT NULL").fetchone()
    if not (row and row[0]):
        return None
    forward = run_id.removesuffix("/back")
    found = conn.execute(
        "SELECT detail->>'slug' FROM tm_control.events WHERE run_id = ANY(%s) AND step = 'preflight' "
        "AND kind = 'finished' AND detail ? 'slug' ORDER BY (run_id = %s) DESC, at DESC LIMIT 1",
        ([run_id, forward], run_id)).fetchone()
    return str(found[0]) if found and found[0] else None


def run_row(conn: psycopg.Connection, run_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM tm_control.runs WHERE run_id = %s", (run_id,))
    row = cur.fetchone()
    if row is None:
        return None
    assert cur.description is not None
    return dict(zip([d.name for d in cur.description], row, strict=True))


def plan_chunks(conn: psycopg.Connection, run_id: str, chunks: list[Chunk]) -> None:
    """Insert planned chunks; chunks already in the ledger keep their status (stable ids).

    Bounds are stored with ``keycodec`` (every key type survives the reload, ``_chunks``); a key
    value of a type it cannot hold raises before anything is written."""
    rows = [(run_id, c.chunk_id, c.engine, c.table_name, keycodec.dumps(c.bounds)) for c in chunks]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tm_control.chunks (run_id, chunk_id, engine, table_name, bounds) "
            "VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT (run_id, chunk_id) DO NOTHING",
            rows,
        )


def _chunks(rows: list[Any]) -> list[Chunk]:
    """Chunks from ``(chunk_id, engine, table_name, bounds::text)`` rows (typed key values back)."""
    return [Chunk(r[0], r[1], r[2], keycodec.loads(r[3])) for r in rows]


# Decoded bounds by their digest: every gate and step reads the run's whole plan, and a plan over a
# retention window repeats each base in every day window (1.2 MB of JSON for the demo tenant's 105
# chunks, ~0.1 s to fetch and decode each time). Content-addressed, so a chunk planned anew under
# the same id (a wiped ledger) can never be served stale; bounded, so a long-lived scheduler does
# not keep old runs. Callers must not mutate the bounds they get.
_BOUNDS: OrderedDict[str, dict[str, Any]] = OrderedDict()
_BOUNDS_MAX = 20_000


def _cached_chunks(conn: psycopg.Connection, where: LiteralString, params: tuple[Any, ...]) -> list[Chunk]:
    """The chunks ``where`` selects, by id, their bounds decoded once per process."""
    rows = conn.execute(sql.SQL("SELECT chunk_id, engine, table_name, md5(bounds::text) FROM tm_control.chunks "
                                "WHERE {} ORDER BY chunk_id").format(sql.SQL(where)), params).fetchall()  # type: ignore[arg-type]
    missing = [r[0] for r in rows if r[3] not in _BOUNDS]
    if missing:
        for digest, text in conn.execute("SELECT md5(bounds::text), bounds::text FROM tm_control.chunks "
                                         "WHERE run_id = %s AND chunk_id = ANY(%s)", (params[0], missing)):
            _BOUNDS[digest] = keycodec.loads(text)
    for r in rows:
        _BOUNDS.move_to_end(r[3])
    while len(_BOUNDS) > _BOUNDS_MAX:
        _BOUNDS.popitem(last=False)
    return [Chunk(r[0], r[1], r[2], _BOUNDS[r[3]]) for r in rows]


def run_chunks(conn: psycopg.Connection, run_id: str, engine: str) -> list[Chunk]:
    """Every planned chunk of ``run_id`` for ``engine`` (done or not), by id."""
    return _cached_chunks(conn, "run_id = %s AND engine = %s", (run_id, engine))


def get_chunk(conn: psycopg.Connection, run_id: str, chunk_id: str) -> Chunk:
    """One planned chunk; KeyError when the run has no such chunk (planned ids only)."""
    row = conn.execute(
        "SELECT chunk_id, engine, table_name, bounds::text FROM tm_control.chunks WHERE run_id = %s AND chunk_id = %s",
        (run_id, chunk_id),
    ).fetchone()
    if row is None:
        raise KeyError(f"run {run_id} has no planned chunk {chunk_id}")
    return _chunks([row])[0]


def pending_chunks(conn: psycopg.Connection, run_id: str, engine: str) -> list[Chunk]:
    return _cached_chunks(conn, "run_id = %s AND engine = %s AND status <> 'done'", (run_id, engine))


def chunk_status(conn: psycopg.Connection, run_id: str, chunk_id: str) -> ChunkStatus | None:
    row = conn.execute(
        "SELECT status FROM tm_control.chunks WHERE run_id = %s AND chunk_id = %s", (run_id, chunk_id)
    ).fetchone()
    return ChunkStatus(row[0]) if row else None


def mark_chunk_running(conn: psycopg.Connection, run_id: str, chunk_id: str) -> None:
    """Count an attempt. Runs in its own transaction so the count survives a failed copy."""
    with conn.transaction():
        conn.execute(
            "UPDATE tm_control.chunks SET status = 'running', attempts = attempts + 1, "
            "started_at = clock_timestamp(), last_error = NULL WHERE run_id = %s AND chunk_id = %s",
            (run_id, chunk_id),
        )


def mark_chunk_done(
    conn: psycopg.Connection,
    run_id: str,
    chunk_id: str,
    rows: int,
    bytes_copied: int,
    source_checksum: str,
    target_checksum: str,
    partitions: int | None = None,
) -> None:
    """Must run inside the caller's transaction that wrote the chunk's rows."""
    conn.execute(
        "UPDATE tm_control.chunks SET status = 'done', rows_copied = %s, bytes_copied = %s, "
        "source_checksum = %s, target_checksum = %s, partitions = %s, finished_at = clock_timestamp() "
        "WHERE run_id = %s AND chunk_id = %s",
        (rows, bytes_copied, source_checksum, target_checksum, partitions, run_id, chunk_id),
    )


def mark_chunk_failed(conn: psycopg.Connection, run_id: str, chunk_id: str, error: str) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE tm_control.chunks SET status = 'failed', last_error = %s, finished_at = clock_timestamp() "
            "WHERE run_id = %s AND chunk_id = %s",
            (error[:2000], run_id, chunk_id),
        )


def chunk_rows(conn: psycopg.Connection, run_id: str) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT chunk_id, engine, table_name, status, rows_copied, partitions, bytes_copied, source_checksum, "
        "target_checksum, attempts, EXTRACT(EPOCH FROM finished_at - started_at) AS seconds, last_error "
        "FROM tm_control.chunks WHERE run_id = %s ORDER BY engine, chunk_id",
        (run_id,),
    )
    assert cur.description is not None
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def record_gate(
    conn: psycopg.Connection,
    run_id: str,
    gate: str,
    passed: bool,
    summary: str,
    evidence: dict[str, Any],
    report_path: str | None,
) -> int:
    """Append a gate evaluation (attempts are numbered; re-running a gate adds a row)."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO tm_control.gates (run_id, gate, attempt, passed, summary, evidence, report_path) "
            "SELECT %s, %s, COALESCE(MAX(attempt), 0) + 1, %s, %s, %s, %s FROM tm_control.gates "
            "WHERE run_id = %s AND gate = %s RETURNING attempt",
            (run_id, gate, passed, summary, Jsonb(evidence), report_path, run_id, gate),
        ).fetchone()
    assert row is not None
    return int(row[0])


def record_event(
    conn: psycopg.Connection,
    run_id: str,
    step: str,
    kind: str,
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append an event; ``at`` backdates it (the preflight starts before the ledger exists)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO tm_control.events (run_id, step, kind, detail, at) "
            "VALUES (%s, %s, %s, %s, COALESCE(%s, clock_timestamp()))",
            (run_id, step, kind, Jsonb(detail or {}), at),
        )


def partitions_by_table(conn: psycopg.Connection, run_id: str) -> dict[str, int]:
    """Per Cassandra table of the run, the partitions its done chunks found holding rows when
    they were copied: an estimate of what the target holds (a cost hint, never evidence)."""
    rows = conn.execute("SELECT table_name, COALESCE(sum(partitions), 0) FROM tm_control.chunks "
                        "WHERE run_id = %s AND engine = 'cassandra' AND status = 'done' GROUP BY table_name",
                        (run_id,)).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def flip_time(conn: psycopg.Connection, run_id: str) -> datetime | None:
    """When the run's DNS flip began to move records (None: it never did): from then on the target
    takes the tenant's own writes (a weighted shift sends them to both sides from its start).

    ``flip_dns`` records ``dns_flip_begins`` just before its first change batch; a try that failed
    before it (control plane down) or waited out a TTL first moved nothing. Runs recorded before
    that event existed fall back to the first start of ``flip_dns`` (earlier: the safe side)."""
    row = conn.execute(
        "SELECT COALESCE(MIN(at) FILTER (WHERE step = 'dns_flip_begins'), "
        "MIN(at) FILTER (WHERE step = 'flip_dns' AND kind = 'started')) "
        "FROM tm_control.events WHERE run_id = %s AND step IN ('dns_flip_begins', 'flip_dns')", (run_id,)).fetchone()
    return row[0] if row and row[0] is not None else None


def last_event(conn: psycopg.Connection, run_id: str, step: str) -> tuple[datetime, dict[str, Any], float] | None:
    """The newest event of ``step``: (at, detail, seconds since, by the ledger's clock), or None."""
    row = conn.execute(
        "SELECT at, detail, EXTRACT(EPOCH FROM clock_timestamp() - at)::float8 FROM tm_control.events "
        "WHERE run_id = %s AND step = %s ORDER BY event_id DESC LIMIT 1", (run_id, step)).fetchone()
    return (row[0], dict(row[1] or {}), float(row[2])) if row else None


def step_durations(conn: psycopg.Connection, run_id: str) -> list[tuple[str, float]]:
    """Seconds per step, from the first 'started' to the last 'finished' event of each step."""
    rows = conn.execute(
        "SELECT step, EXTRACT(EPOCH FROM MAX(at) FILTER (WHERE kind = 'finished') "
        "- MIN(at) FILTER (WHERE kind = 'started'))::float8, MIN(event_id) "
        "FROM tm_control.events WHERE run_id = %s GROUP BY step ORDER BY MIN(event_id)",
        (run_id,),
    ).fetchall()
    return [(r[0], float(r[1]) if r[1] is not None else float("nan")) for r in rows]
