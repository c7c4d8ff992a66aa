"""Exact change capture: the primary's changes after the detach point, filtered to one tenant and
applied on the target in commit order.

Design note (the seam). A logical slot is created on the live PRIMARY first; its consistent point
``C`` is the first commit the slot can decode completely. The standby is then paused at a replay
LSN ``L >= C`` (``replica.LocalReplicaController(min_lsn=C)`` waits for that). A transaction is in
the replica's snapshot exactly when its commit record was replayed, i.e. when the commit's END
LSN is ``<= L`` (``pg_last_wal_replay_lsn()`` is the end of the last replayed record). The SQL
interface reports each COMMIT row at the commit's end LSN, so "apply iff commit_lsn > L" leaves
no gap and no overlap between the copy and the stream.

Decoder: ``test_decoding``. It ships with every PostgreSQL (and RDS), so the migration needs no
extra server package on a platform we do not own; its text format is small and unambiguous (values
are single-quoted with ``''`` escapes, numbers and booleans bare), parsed by ``parse_change``
below and covered by unit tests. Values stay text and are bound with psycopg's *unknown* type, so
the target column types do the conversion exactly as ``COPY`` would.

Tenant filter, decided per change while applying in commit order:
- a table with its own tenant column: member iff the new tuple's column equals the tenant id;
- a table reached through a hop (rules -> properties -> devices -> tenant): member iff its parent
  row exists on the TARGET right now. The target holds exactly the tenant's rows as of the
  previous change (snapshot at ``L`` plus every earlier change, applied in order), so one lookup
  of the immediate parent decides membership for any depth of hops;
- deletes carry only the replica-identity key (we keep the platform's default identity, the
  primary key: REPLICA IDENTITY FULL would need an ACCESS EXCLUSIVE ``ALTER TABLE`` on the live
  platform's tables and would log every old row in full). Deleting by key is exact anyway: keys
  are unique across tenants in a shared table and the target holds only this tenant's rows, so a
  delete of another tenant's key removes nothing;
- an update whose new row is not a member deletes the key on the target (the row left the
  tenant, or was never there: then nothing happens);
- an update that makes a tenant-column row a member which was not on the target (a user or device
  moved INTO the tenant after the detach) also back-fills its descendants (properties, rules, ...)
  from the primary's current state. They are newer than the stream position; later changes in the
  stream re-apply over them idempotently, so the target converges to the source by the end of
  catch-up.

Exactly once. Each source transaction is applied in ONE target transaction with
``session_replication_role = replica``, and the same transaction advances
``tm_control.cdc_progress.applied_lsn``. The slot is only advanced (``pg_replication_slot_advance``)
after that commit, and transactions with ``commit_lsn <= applied_lsn`` are skipped when re-read.
A crash anywhere therefore re-reads at most what was applied already and skips it. Apply itself is
idempotent too (upserts by key, deletes by key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from tenant_migration.postgres.apply import Applier
from tenant_migration.postgres.decoding import (  # noqa: F401
    CdcError,
    Change,
    Op,
    Row,
    Transaction,
    group_transactions,
    int_to_lsn,
    lsn_to_int,
    parse_change,
)
from tenant_migration.tenant_map import TableSpec, TenantMap

log = logging.getLogger(__name__)

PLUGIN = "test_decoding"
PLUGIN_OPTIONS = ("include-xids", "1", "include-timestamp", "1", "skip-empty-xacts", "1")


_CREATE_PROGRESS = sql.SQL(
    """
    CREATE SCHEMA IF NOT EXISTS tm_control;
    CREATE TABLE IF NOT EXISTS tm_control.cdc_progress (
        run_id              text PRIMARY KEY,
        slot_name           text NOT NULL,
        tenant_id           bigint NOT NULL,
        start_lsn           pg_lsn NOT NULL,
        applied_lsn         pg_lsn NOT NULL,
        applied_commit_time timestamptz,
        txns_applied        bigint NOT NULL DEFAULT 0,
        txns_skipped        bigint NOT NULL DEFAULT 0,
        changes_applied     bigint NOT NULL DEFAULT 0,
        changes_filtered    bigint NOT NULL DEFAULT 0,
        updated_at          timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    """
)


class CatchUpTimeout(CdcError):
    """Catch-up did not reach the lag target in time. ``report`` holds the last numbers."""

    def __init__(self, message: str, report: CatchUpReport) -> None:
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------------
# Slot lifecycle (on the primary, as a role with REPLICATION)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlotInfo:
    slot_name: str
    consistent_lsn: str
    created: bool


def slot_name_for(run_id: str) -> str:
    """A slot name derived from the run id: lowercase, [a-z0-9_], <= 63 bytes, prefixed ``tm_``."""
    clean = "".join(c if c.isalnum() else "_" for c in run_id.lower())
    return ("tm_cdc_" + clean)[:63]


def create_slot(source: psycopg.Connection, slot_name: str) -> SlotInfo:
    """Create the logical slot (idempotent). Must run BEFORE the replica is detached.

    An existing slot of ours is reused and reports its ``confirmed_flush_lsn`` (its consistent point
    when nothing was consumed yet). A slot with that name but another plugin, database or a physical
    one is refused: we will not decode through somebody else's slot.
    """
    row = source.execute(
        "SELECT slot_type, plugin, database, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
        (slot_name,),
    ).fetchone()
    if row is not None:
        dbname = source.execute("SELECT current_database()").fetchone()
        if row[0] != "logical" or row[1] != PLUGIN or dbname is None or row[2] != dbname[0]:
            raise CdcError(f"replication slot {slot_name} exists but is not a {PLUGIN} slot of this database")
        return SlotInfo(slot_name, str(row[3]), created=False)
    created = source.execute(
        "SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (slot_name, PLUGIN)
    ).fetchone()
    assert created is not None
    log.info("created logical slot %s at %s", slot_name, created[0])
    return SlotInfo(slot_name, str(created[0]), created=True)


def drop_slot(source: psycopg.Connection, slot_name: str, timeout: float = 30.0) -> bool:
    """Drop the slot so no WAL stays retained on the primary (idempotent: False when absent).

    Called at the end of catch-up and on abort. A slot in use by a backend still decoding (a killed
    worker whose session lingers) is waited for, then refused loudly rather than leaking WAL silently.
    """
    deadline = time.monotonic() + timeout
    while True:
        row = source.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot_name,)
        ).fetchone()
        if row is None:
            return False
        if row[0] is None:
            try:
                source.execute("SELECT pg_drop_replication_slot(%s)", (slot_name,))
                return True
            except psycopg.errors.UndefinedObject:
                return False
            except psycopg.errors.ObjectInUse:
                pass
        if time.monotonic() > deadline:
            raise CdcError(f"slot {slot_name} is still in use by pid {row[0]}; it retains WAL until dropped")
        time.sleep(0.2)


# --------------------------------------------------------------------------------------------------
# Progress (tm_control.cdc_progress on the target)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    run_id: str
    slot_name: str
    tenant_id: int
    start_lsn: str
    applied_lsn: str
    applied_commit_time: datetime | None
    txns_applied: int
    txns_skipped: int
    changes_applied: int
    changes_filtered: int


def ensure_progress_table(target: psycopg.Connection) -> None:
    with target.transaction():
        target.execute(_CREATE_PROGRESS)


def start_progress(target: psycopg.Connection, run_id: str, slot_name: str, tenant_id: int, start_lsn: str) -> Progress:
    """Register where the stream starts (the detach LSN), or return the stored progress.

    Resuming with another slot, tenant or start point is refused: the stored ``applied_lsn`` only
    means something for the seam it was recorded against.
    """
    ensure_progress_table(target)
    with target.transaction():
        target.execute(
            "INSERT INTO tm_control.cdc_progress (run_id, slot_name, tenant_id, start_lsn, applied_lsn) "
            "VALUES (%s, %s, %s, %s::pg_lsn, %s::pg_lsn) ON CONFLICT (run_id) DO NOTHING",
            (run_id, slot_name, tenant_id, start_lsn, start_lsn),
        )
    prog = read_progress(target, run_id)
    assert prog is not None
    if (prog.slot_name, prog.tenant_id) != (slot_name, tenant_id) or lsn_to_int(prog.start_lsn) != lsn_to_int(start_lsn):
        raise CdcError(
            f"run {run_id} streams slot {prog.slot_name} for tenant {prog.tenant_id} from {prog.start_lsn}; "
            f"refusing to resume it with slot {slot_name}, tenant {tenant_id}, start {start_lsn}"
        )
    return prog


def read_progress(target: psycopg.Connection, run_id: str) -> Progress | None:
    if target.execute("SELECT to_regclass('tm_control.cdc_progress')").fetchone() in (None, (None,)):
        return None
    row = target.execute(
        "SELECT run_id, slot_name, tenant_id, start_lsn::text, applied_lsn::text, applied_commit_time, "
        "txns_applied, txns_skipped, changes_applied, changes_filtered FROM tm_control.cdc_progress WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    return Progress(*row) if row else None


def _bump_progress(
    target: psycopg.Connection, run_id: str, lsn: str, commit_time: datetime | None,
    applied_txns: int, skipped_txns: int, changes: int, filtered: int,
) -> None:
    # GREATEST keeps applied_lsn monotonic even if a caller replays an old batch by mistake.
    target.execute(
        "UPDATE tm_control.cdc_progress SET applied_lsn = GREATEST(applied_lsn, %s::pg_lsn), "
        "applied_commit_time = COALESCE(%s, applied_commit_time), txns_applied = txns_applied + %s, "
        "txns_skipped = txns_skipped + %s, changes_applied = changes_applied + %s, "
        "changes_filtered = changes_filtered + %s, updated_at = clock_timestamp() WHERE run_id = %s",
        (lsn, commit_time, applied_txns, skipped_txns, changes, filtered, run_id),
    )


# --------------------------------------------------------------------------------------------------
# Catch-up
# --------------------------------------------------------------------------------------------------


@dataclass
class CatchUpReport:
    run_id: str
    slot_name: str
    converged: bool
    start_lsn: str
    applied_lsn: str
    head_lsn: str
    lag_bytes: int
    lag_seconds: float
    txns_applied: int
    txns_skipped: int
    changes_applied: int
    changes_filtered: int
    backfilled_rows: int
    batches: int
    seconds: float

    @property
    def changes_per_second(self) -> float:
        return self.changes_applied / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["changes_per_second"] = round(self.changes_per_second, 1)
        return out


def _peek(source: psycopg.Connection, slot_name: str, batch_changes: int) -> list[tuple[str, Any, str]]:
    query = sql.SQL("SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, {})").format(
        sql.SQL(", ").join(sql.Literal(o) for o in PLUGIN_OPTIONS)
    )
    return [(r[0], r[1], r[2]) for r in source.execute(query, (slot_name, batch_changes)).fetchall()]


def first_pending_xid(source: psycopg.Connection, slot_name: str) -> str | None:
    """The xid of the oldest transaction with changes the stream has not consumed, or None.

    Peeked with the stream's own plugin options: without ``skip-empty-xacts`` a transaction with
    an xid but no row change (an ANALYZE, autovacuum's auto-analyze after a burst of writes, DDL)
    shows as pending, and ``catch_up`` never consumes it (it sees no rows), so the lag would read
    as that transaction's age for as long as nothing else is written (a catch_up gate failed so,
    with 12 s of "lag" right after a converged catch-up)."""
    rows = _peek(source, slot_name, 1)
    return rows[0][1] if rows else None


def apply_batch(
    target: psycopg.Connection,
    applier: Applier,
    run_id: str,
    txns: list[Transaction],
    applied_lsn: int,
    on_applied: Callable[[Transaction], None] | None = None,
    group_size: int = 100,
) -> tuple[int, int, int, int, Transaction | None]:
    """Apply whole transactions after ``applied_lsn``; returns (applied, skipped, changes, filtered, last).

    Up to ``group_size`` consecutive source transactions share one target transaction (a source
    transaction is never split across two), together with the progress update that names the last
    of them: one commit (one fsync) per group instead of per source transaction, same atomicity.
    """
    applied = skipped = changes = filtered = 0
    last: Transaction | None = None
    todo = [t for t in txns if lsn_to_int(t.commit_lsn) > applied_lsn]  # others: snapshot, or applied before
    for i in range(0, len(todo), max(1, group_size)):
        group = todo[i : i + max(1, group_size)]
        g_applied = g_skipped = g_changes = g_filtered = 0
        done: list[Transaction] = []
        with target.transaction():
            target.execute("SET LOCAL session_replication_role = replica")
            for txn in group:
                wrote = sum(1 for ch in txn.changes if applier.apply(ch))
                g_changes += wrote
                g_filtered += len(txn.changes) - wrote
                if wrote:
                    g_applied += 1
                    done.append(txn)
                else:
                    g_skipped += 1
            tail = group[-1]
            stamp = next((t.commit_time for t in reversed(done)), None)
            _bump_progress(target, run_id, tail.commit_lsn, stamp, g_applied, g_skipped, g_changes, g_filtered)
        applied, skipped = applied + g_applied, skipped + g_skipped
        changes, filtered = changes + g_changes, filtered + g_filtered
        last = done[-1] if done else last
        if on_applied is not None:
            for txn in done:
                on_applied(txn)
    return applied, skipped, changes, filtered, last


def catch_up(
    source: psycopg.Connection,
    target: psycopg.Connection,
    tmap: TenantMap,
    tenant_id: int,
    run_id: str,
    slot_name: str,
    start_lsn: str,
    *,
    max_lag_bytes: int = 64 * 1024,
    timeout: float = 600.0,
    batch_changes: int = 5000,
    group_size: int = 100,
    idle_sleep: float = 0.2,
    until_lsn: str | None = None,
    on_applied: Callable[[Transaction], None] | None = None,
    raise_on_timeout: bool = True,
) -> CatchUpReport:
    """Stream the tenant's changes after ``start_lsn`` (the detach LSN) until the lag target is met.

    ``source`` is an autocommit connection to the PRIMARY as a role with REPLICATION
    (``migration_reader``); ``target`` a connection as ``migration_writer``. Converged means: the last
    peek returned less than a full batch (everything committed before it was processed) and the
    WAL written since is at most ``max_lag_bytes``. With ``until_lsn`` it also waits until every
    transaction committed before that LSN is applied (a cutover drains to a fixed point this way).
    Safe to call again after any failure: it resumes from ``tm_control.cdc_progress``.
    """
    if not source.autocommit:
        raise CdcError("the source connection must be autocommit (slot functions must not sit in a long transaction)")
    started = time.monotonic()
    prog = start_progress(target, run_id, slot_name, tenant_id, start_lsn)
    applier = Applier(target, tmap, tenant_id, source=source)
    applied_lsn = lsn_to_int(prog.applied_lsn)
    last_commit_time = prog.applied_commit_time
    applied = skipped = changes = filtered = batches = 0
    head = lag = 0
    lag_seconds = 0.0
    until = lsn_to_int(until_lsn) if until_lsn else None
    converged = False
    while True:
        head_row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert head_row is not None
        head = lsn_to_int(head_row[0])
        rows = _peek(source, slot_name, batch_changes)
        batches += 1
        txns = list(group_transactions(rows))
        a, s, c, f, last = apply_batch(target, applier, run_id, txns, applied_lsn, on_applied, group_size)
        applied, skipped, changes, filtered = applied + a, skipped + s, changes + c, filtered + f
        if txns:
            batch_end = txns[-1].commit_lsn
            applied_lsn = max(applied_lsn, lsn_to_int(batch_end))
            # Only after the target committed: a crash before this re-reads, and skips, what was applied.
            source.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot_name, batch_end))
        if last is not None and last.commit_time is not None:
            last_commit_time = last.commit_time
        drained = len(rows) < batch_changes
        processed_to = max(applied_lsn, head) if drained else applied_lsn
        now_row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert now_row is not None
        lag = max(0, lsn_to_int(now_row[0]) - processed_to)
        lag_seconds = 0.0 if drained or last_commit_time is None else (datetime.now(UTC) - last_commit_time).total_seconds()
        log.info("cdc batch %d: %d txns applied, %d skipped, lag %d bytes %.1fs", batches, a, s, lag, lag_seconds)
        if drained and lag <= max_lag_bytes and (until is None or processed_to >= until):
            converged = True
            break
        if time.monotonic() - started > timeout:
            break
        if drained:
            time.sleep(idle_sleep)
    report = CatchUpReport(
        run_id=run_id, slot_name=slot_name, converged=converged, start_lsn=prog.start_lsn,
        applied_lsn=int_to_lsn(applied_lsn), head_lsn=int_to_lsn(head), lag_bytes=lag, lag_seconds=lag_seconds,
        txns_applied=applied, txns_skipped=skipped, changes_applied=changes, changes_filtered=filtered,
        backfilled_rows=applier.backfilled_rows, batches=batches, seconds=time.monotonic() - started,
    )
    if not converged and raise_on_timeout:
        raise CatchUpTimeout(
            f"catch-up of run {run_id} did not converge in {timeout:.0f}s: lag {lag} bytes, {lag_seconds:.1f}s", report
        )
    return report


def lag(source: psycopg.Connection, target: psycopg.Connection, run_id: str) -> dict[str, Any]:
    """Current lag of a run: WAL bytes past the applied LSN, seconds since the last applied commit."""
    prog = read_progress(target, run_id)
    if prog is None:
        raise CdcError(f"run {run_id} has no change-capture progress")
    row = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    seconds = (datetime.now(UTC) - prog.applied_commit_time).total_seconds() if prog.applied_commit_time else None
    return {
        "applied_lsn": prog.applied_lsn,
        "head_lsn": row[0],
        "lag_bytes": max(0, lsn_to_int(row[0]) - lsn_to_int(prog.applied_lsn)),
        "seconds_since_last_applied_commit": seconds,
    }


# --------------------------------------------------------------------------------------------------
# After the drain: what the shared platform took that the target lacks
# --------------------------------------------------------------------------------------------------

_NO_EQUALITY = ("json", "xml", "point", "line", "lseg", "box", "path", "polygon", "circle")


@dataclass(frozen=True)
class PendingChange:
    """A change of the tenant the run's stream holds, not applied, whose effect the target lacks."""

    table: str
    op: str
    key: dict[str, str | None]
    commit_time: datetime | None
    lsn: str

    def label(self) -> str:
        at = self.commit_time.isoformat() if self.commit_time else "?"
        return f"{self.table} {self.op} {self.key} committed {at}"


@dataclass
class PendingReport:
    tenant_changes: int  # the tenant's changes in the stream after the applied point
    missing: list[PendingChange]
    newest: datetime | None  # commit time of the newest of those changes
    peeked: int  # stream changes read (all tenants)
    truncated: bool  # the peek reached its limit: more may be pending

    def to_dict(self) -> dict[str, Any]:
        return {"tenant_changes": self.tenant_changes, "missing": len(self.missing),
                "missing_sample": [m.label() for m in self.missing[:20]],
                "newest": self.newest.isoformat() if self.newest else None, "peeked": self.peeked,
                "truncated": self.truncated}


def _target_has(target: psycopg.Connection, tmap: TenantMap, spec: TableSpec, types: dict[str, str],
                key: Row, values: Row | None) -> bool:
    """The target holds the row of ``key`` (``values`` None) or holds ``values`` in it, or a newer
    version (``updated_at`` at or after the change's: last writer wins, as the applier does).
    Values are the stream's text forms, read by each column's own input function."""
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in spec.key)
    params: list[Any] = [key[k] for k in spec.key]
    if values is None:
        test: sql.Composable = sql.SQL("true")
        qparams: list[Any] = []
    else:
        parts = []
        qparams = []
        for col, value in values.items():
            if col in spec.key or col not in types:
                continue
            if types[col].split("(")[0].split("[")[0] in _NO_EQUALITY:
                parts.append(sql.SQL("{}::text IS NOT DISTINCT FROM %s").format(sql.Identifier(col)))
            else:
                parts.append(sql.SQL("{} IS NOT DISTINCT FROM %s").format(sql.Identifier(col)))
            qparams.append(value)
        same = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
        if "updated_at" in values and "updated_at" in types and values["updated_at"] is not None:
            test = sql.SQL("({}) OR updated_at >= %s").format(same)
            qparams.append(values["updated_at"])
        else:
            test = same
    row = target.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(test, tmap.qualified(spec.name), where),
                         [*qparams, *params]).fetchone()
    return bool(row and row[0])


def pending_tenant_changes(source: psycopg.Connection, target: psycopg.Connection, tmap: TenantMap, tenant_id: int,
                           run_id: str, slot_name: str, *, limit: int = 200_000) -> PendingReport:
    """The tenant's changes the run's stream holds after its applied point (``peek``: nothing is
    consumed) whose effect the target does not show: an insert or update whose values (or a newer
    version) the target lacks, a delete of a row the target still holds. After the drain, these are
    writes the shared platform accepted that nobody copied. A change the target already shows (the
    registration switch resumed on both sides, a straggler's write the tenant repeated) is not."""
    from tenant_migration.postgres.catalog import columns_of_tables

    prog = read_progress(target, run_id)
    applied = lsn_to_int(prog.applied_lsn) if prog else 0
    rows = _peek(source, slot_name, limit)
    applier = Applier(target, tmap, tenant_id)
    types = {t: dict(cols) for t, cols in columns_of_tables(target, tmap.schema, list(tmap.tables)).items()}
    count = 0
    newest: datetime | None = None
    missing: list[PendingChange] = []
    for txn in group_transactions(rows):
        if lsn_to_int(txn.commit_lsn) <= applied:
            continue
        for ch in txn.changes:
            if ch.op == "TRUNCATE":
                hit = [t for s, t in ch.truncated if s == tmap.schema and t in tmap.tables]
                if hit:
                    count += 1
                    missing.append(PendingChange(",".join(hit), "TRUNCATE", {}, txn.commit_time, ch.lsn))
                continue
            if ch.schema != tmap.schema or ch.table not in tmap.tables:
                continue
            spec = tmap.tables[ch.table]
            if ch.op == "DELETE":
                assert ch.old_key is not None
                key, values, ours = ch.old_key, None, _target_has(target, tmap, spec, types[ch.table], ch.old_key, None)
                lacks = ours  # the tenant's row (the target holds it) is still there
            else:
                assert ch.new is not None
                key = {k: ch.new.get(k) for k in spec.key}
                values = ch.new
                ours = applier.is_member(spec, ch.new)
                lacks = ours and not _target_has(target, tmap, spec, types[ch.table], key, values)
            if not ours:
                continue
            count += 1
            newest = max(newest or txn.commit_time, txn.commit_time) if txn.commit_time else newest
            if lacks:
                missing.append(PendingChange(ch.table, ch.op, key, txn.commit_time, ch.lsn))
    return PendingReport(count, missing, newest, len(rows), len(rows) >= limit)
